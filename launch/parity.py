"""DreamerV3 side by side with the official implementation: both trained at equal settings on the
same tasks, seeds and machine, their learning curves in one table and one plot per task.

  python launch/parity.py --official DIR --root ROOT [--tasks TASK[,TASK...]] [--seeds 0,1]
                          [--steps 30000] [--train-ratio 128] [--envs 1] [--jobs 2] [--bin 10000]
                          [--plot-bin 2000] [--sides ours,official] [--cache DIR] [--report-only]
                          [-- OUR TRAIN ARGS...]

DIR is the official code (github.com/danijar/dreamerv3): a checkout, or a git directory whose HEAD
is used. Its source is exported to CACHE/src-<revision> and its own environment built once in
CACHE/venv (CACHE: --cache, default ROOT/official-code) from launch/parity-requirements.txt: the
official requirements that a CPU run of a DMC task needs, pinned (its jax 0.4.33 and numpy<2), plus
dm-control for its DMC wrapper. Only the package index is needed.

Both sides run the paper's `dmc_proprio` preset of the 2024 code (model size1m, action repeat 1,
batch 16 x 64 with one replay-context step, `--envs` environments, float32 on the CPU) with the
train ratio lowered to --train-ratio; both count it as replayed steps per agent step (updates =
agent steps x ratio / (16 x 64)). The flags each side gets are `ours_command` and
`official_command`. Runs go to ROOT/ours/TASK/seed_S and ROOT/official/TASK/seed_S (output in
train.log there), at most --jobs at a time, ours and official alternating; ROOT/.../parity.json
holds a run's wall-clock seconds summed over launches (a running launch writes its time every
minute, so that one whose launcher is killed outright still counts) and whether it finished. Rerunning skips
finished runs and resumes the others (ours from its last checkpoint, the official code from its
own, written every 15 minutes). OUR TRAIN ARGS go to our side only, after its settings (e.g.
`-- --configs debug` for a tiny model when testing the harness; a comparison leaves them out).

Then (only this with --report-only) it reads `episode/score` of both (the training episodes: the
official `train` script has no evaluation episodes; ours from metrics.jsonl, the official from
scores.jsonl) and writes ROOT/parity.md: per task, mean ± std over seeds of each seed's mean score
in (budget - bin, budget] at each budget (multiples of --bin; a seed counts there once it has
trained past the budget), whether ours is within the official seeds' range or above it, the
training losses and statistics of both over the last bin both have reached, and each run's hours;
and ROOT/parity_TASK.png, both curves (means over seeds of each seed's mean in bins of --plot-bin
env steps) with their min-max bands.
The last line of stdout is one JSON object: root, runs, finished, failed, skipped, scores ({task:
{side: {budget: {mean, std, n, min, max}}}}), verdicts ({task: {budget: "within" | "above" |
"below by X" | null}}), hours ({side: {task: {seed: hours}}}) and plots.
Exit status: 0; 1 when a run failed; 2 for a wrong command line; 130 when interrupted.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "launch"))

import learn

from dreamer.args import Option, UsageError, integer, parse
from dreamer.bench import plotting
from dreamer.config import ConfigError

SIDES = ("ours", "official")
TASKS = ("dmc_cartpole_balance", "dmc_cartpole_swingup", "dmc_walker_stand", "dmc_finger_spin")
KEY = "episode/score"
REQUIREMENTS = ROOT / "launch" / "parity-requirements.txt"
OPTIONS = (
    Option("official", "", metavar="DIR"),
    Option("root", required=True, metavar="ROOT"),
    Option("tasks", TASKS, many=True, metavar="TASK"),
    Option("seeds", (0, 1), integer(0), many=True, metavar="SEED"),
    Option("steps", 30_000, integer(1), metavar="N"),
    Option("train-ratio", 128, integer(1), metavar="R"),
    Option("envs", 1, integer(1), metavar="N"),
    Option("jobs", 2, integer(1), metavar="N"),
    Option("bin", 10_000, integer(1), metavar="N"),
    Option("plot-bin", 2_000, integer(1), metavar="N"),
    Option("sides", SIDES, many=True, metavar="SIDE"),
    Option("cache", "", metavar="DIR"),
    Option("report-only", False, switch=True),
)
# Comparable statistics of the two codes' training metrics: (what, ours, official). The official
# reconstruction loss is logged per observation key (e.g. train/loss/position), summed here. Its
# `train/ret` is the λ-return after return normalisation, ours `train/ac/return` before it: not
# compared.
METRICS = (
    ("loss: reconstruction", "train/loss/vector", "rec"),
    ("loss: reward", "train/loss/reward", "train/loss/rew"),
    ("loss: continue", "train/loss/cont", "train/loss/con"),
    ("loss: dynamics (KL, free nats)", "train/loss/dyn", "train/loss/dyn"),
    ("loss: representation", "train/loss/rep", "train/loss/rep"),
    ("loss: value", "train/loss/value", "train/loss/value"),
    ("loss: replayed value", "train/loss/repval", "train/loss/repval"),
    ("loss: policy", "train/loss/policy", "train/loss/policy"),
    ("posterior entropy", "train/wm/post_ent", "train/rep_ent"),
    ("prior entropy", "train/wm/prior_ent", "train/dyn_ent"),
    ("policy entropy", "train/ac/entropy", "train/ent/action"),
    ("critic value", "train/ac/value", "train/val"),
)
NOT_RECONSTRUCTION = {"rew", "con", "dyn", "rep", "value", "repval", "policy"}


def plan(argv: list[str]) -> dict:
    args = parse(argv, OPTIONS, __doc__, rest=True)
    unknown = sorted(set(args["sides"]) - set(SIDES))
    if unknown:
        raise UsageError(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(SIDES)}")
    if "official" in args["sides"] and not args["report-only"] and not args["official"]:
        raise UsageError("--official DIR is required to train the official side: a checkout or "
                         "the git directory of github.com/danijar/dreamerv3 (or --sides ours)")
    if any(not t.startswith("dmc_") for t in args["tasks"]):
        raise UsageError("--tasks: the comparison runs DMC tasks (dmc_DOMAIN_TASK) only")
    root = Path(args["root"]).resolve()
    return {**args.values, "rest": list(args.rest), "root": root,
            "cache": Path(args["cache"]).resolve() if args["cache"] else root / "official-code",
            "budgets": list(range(args["bin"], args["steps"] + 1, args["bin"])) or [args["steps"]]}


def runs_of(p: dict) -> list[tuple[str, learn.Run]]:
    """(side, run) of every side, seed and task; seed by seed and the sides alternating, so that
    the first runs cover every task on both sides."""
    return [(side, learn.Run(task, seed, p["root"] / side / task / f"seed_{seed}"))
            for seed in p["seeds"] for task in p["tasks"] for side in p["sides"]]


# ----------------------------------------------------------------------------- commands
def ours_command(p: dict, run: learn.Run) -> list[str]:
    return [sys.executable, str(ROOT / "launch" / "train.py"), "--configs", "dmc_proprio",
            f"--run.train_ratio={p['train-ratio']}", f"--run.envs={p['envs']}",
            "--jax.compute_dtype=float32", f"--env.task={run.task}", f"--seed={run.seed}",
            f"--run.steps={p['steps']}", f"--logdir={run.logdir}", *p["rest"]]


def official_command(p: dict, run: learn.Run, python: Path, src: Path) -> list[str]:
    """The official `dreamerv3/main.py` with its `dmc_proprio` preset (its `train` script: no
    evaluation episodes) and the same settings as `ours_command`."""
    return ["env", "JAX_PLATFORMS=cpu", f"MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')}",
            str(python), str(src / "dreamerv3" / "main.py"), "--configs", "dmc_proprio",
            "--task", run.task, "--seed", str(run.seed), "--logdir", str(run.logdir),
            "--run.steps", str(p["steps"]), "--run.train_ratio", str(p["train-ratio"]),
            "--run.envs", str(p["envs"]), "--jax.platform", "cpu", "--jax.compute_dtype",
            "float32", "--jax.prealloc", "False", "--logger.outputs", "jsonl",
            "--run.usage.nvsmi", "False"]


def say(text: str) -> None:
    print(f"parity: {text}", file=sys.stderr, flush=True)


def official_source(given: str, cache: Path) -> Path:
    """The official code's source: the checkout itself, or the HEAD of a git directory exported
    to CACHE/src-<revision>."""
    path = Path(given).expanduser().resolve()
    if (path / "dreamerv3" / "main.py").is_file():
        return path
    rev = subprocess.run(["git", "--git-dir", str(path), "rev-parse", "HEAD"],
                         capture_output=True, text=True, check=False)
    if rev.returncode != 0:
        raise UsageError(f"--official {given}: neither a checkout of danijar/dreamerv3 (no "
                         "dreamerv3/main.py) nor a git directory; clone it with `git clone "
                         "https://github.com/danijar/dreamerv3`")
    out = cache / f"src-{rev.stdout.strip()}"
    if not (out / "dreamerv3" / "main.py").is_file():
        say(f"exporting the official code {rev.stdout.strip()[:7]} to {out}")
        tmp = out.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "--git-dir", str(path), "archive", "HEAD"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(out)
    return out


def official_python(cache: Path) -> Path:
    """CACHE/venv/bin/python with the official code's requirements (launch/parity-requirements.txt),
    built when missing or when the requirements changed."""
    venv = cache / "venv"
    python, stamp = venv / "bin" / "python", venv / ".parity-requirements"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.is_file() and stamp.is_file() and stamp.read_text() == want:
        return python
    say(f"building the official code's environment in {venv} (the first time takes minutes)")
    shutil.rmtree(venv, ignore_errors=True)
    base = os.environ.get("PYTHON", "python3.11")
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True)
    subprocess.run([str(python), "-c", "import jax, elements, ninjax, portal, dm_control.suite"],
                   check=True, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    stamp.write_text(want)
    return python


# ----------------------------------------------------------------------------- bookkeeping
def state_of(run: learn.Run) -> dict:
    """The run's parity.json: `seconds` of its ended launches, `steps` once it reached --steps,
    and `open`, the seconds so far of a launch not yet ended (written every minute, so that a
    launcher killed outright still leaves its run's time)."""
    try:
        return json.loads((run.logdir / "parity.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"seconds": 0.0, "steps": 0}


def write_state(run: learn.Run, state: dict) -> None:
    run.logdir.mkdir(parents=True, exist_ok=True)
    (run.logdir / "parity.json").write_text(json.dumps(state))


def close_open(run: learn.Run) -> None:
    """Counts the time of an earlier launch that was killed before it could record its end."""
    state = state_of(run)
    if state.get("open"):
        state["seconds"] = state["seconds"] + state.pop("open")
        write_state(run, state)


def record_tick(run: learn.Run, seconds: float) -> None:
    write_state(run, {**state_of(run), "open": seconds})


def record_exit(p: dict, run: learn.Run, status: int, seconds: float) -> None:
    """Adds a launch's wall time to the run's parity.json; a run that exits 0 reached --steps."""
    state = state_of(run)
    state.pop("open", None)
    state["seconds"] = state["seconds"] + seconds
    if status == 0:
        state["steps"] = max(state["steps"], p["steps"])
    write_state(run, state)


def hours_of(run: learn.Run) -> float:
    state = state_of(run)
    return (state["seconds"] + state.get("open", 0.0)) / 3600


def finished(p: dict, run: learn.Run) -> bool:
    return state_of(run)["steps"] >= p["steps"]


# ----------------------------------------------------------------------------- reading
def series(side: str, logdir: Path, key: str = KEY) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` in a run of either side; empty when it has not logged one. The
    official code writes episode scores to scores.jsonl and the rest to metrics.jsonl. Its
    reconstruction loss `rec` is the sum of its per-key losses at each step."""
    name = "scores.jsonl" if side == "official" and key == KEY else "metrics.jsonl"
    path = logdir / name
    if not path.is_file():
        return np.zeros(0, np.int64), np.zeros(0)
    if key != "rec":
        return plotting.read_series(path, key)
    totals: dict[int, float] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        parts = [v for k, v in record.items() if k.startswith("train/loss/")
                 and k.split("/", 2)[2] not in NOT_RECONSTRUCTION]
        if parts:
            totals[int(record["step"])] = float(sum(parts))
    steps = np.array(sorted(totals), np.int64)
    return steps, np.array([totals[s] for s in steps], np.float64)


def side_series(p: dict, side: str, task: str, key: str = KEY) -> list[tuple]:
    out = [series(side, r.logdir, key) for s, r in runs_of(p) if s == side and r.task == task]
    return [s for s in out if len(s[0])]


def reached(side: str, run: learn.Run) -> int:
    """The env steps a run has trained: the latest step in either of its logs, or --steps once
    it finished (the official code's last episode of a run ends short of its budget)."""
    steps = [state_of(run)["steps"]]
    for name in ("metrics.jsonl", *(("scores.jsonl",) if side == "official" else ())):
        path = run.logdir / name
        if path.is_file():
            steps.append(max(plotting.read_series(path, "step")[0], default=0))
    return int(max(steps))


def at_budgets(p: dict, side: str, task: str, budgets: list[int]) -> dict:
    """Per budget, the scores of the runs that have trained past it (mean ± std, n, min, max):
    a run still inside a bin is left out of it, not scored on the bin's first part."""
    runs = [r for s, r in runs_of(p) if s == side and r.task == task]
    pairs = [(series(side, r.logdir), reached(side, r)) for r in runs]
    return {str(b): stats([s for s, done in pairs if done >= b and len(s[0])], b, p["bin"])
            for b in budgets}


def stats(runs: list[tuple], budget: int, width: int) -> dict | None:
    values = [x for x in (plotting.at_budget(r, budget, width) for r in runs) if x is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values),
            "min": float(np.min(values)), "max": float(np.max(values))}


def verdict(ours: dict | None, official: dict | None) -> str | None:
    """Ours against the official seeds at a budget: above their range, within it, or below its
    lowest seed by how much; None without runs on both sides."""
    if ours is None or official is None:
        return None
    if ours["mean"] > official["max"]:
        return "above"
    if ours["mean"] >= official["min"]:
        return "within"
    return f"below by {official['min'] - ours['mean']:.1f}"


def cell(s: dict | None) -> str:
    return "–" if s is None else f"{s['mean']:.1f} ± {s['std']:.1f} (n={s['n']})"


def report(p: dict) -> tuple[str, dict]:
    """Writes ROOT/parity.md and the plots; returns its text and the JSON summary."""
    width, budgets = p["bin"], p["budgets"]
    scores, verdicts, plots, sections = {}, {}, [], []
    hours = {side: {} for side in p["sides"]}
    for side, run in runs_of(p):
        if h := hours_of(run):
            hours[side].setdefault(run.task, {})[str(run.seed)] = h
    for task in p["tasks"]:
        by_side = {side: side_series(p, side, task) for side in p["sides"]}
        scores[task] = {side: at_budgets(p, side, task, budgets) for side in p["sides"]}
        verdicts[task] = {str(b): verdict(scores[task].get("ours", {}).get(str(b)),
                                          scores[task].get("official", {}).get(str(b)))
                          for b in budgets}
        head = ["", *(f"{b:,} steps" for b in budgets)]
        lines = [f"### {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for side in p["sides"]:
            lines.append("| " + " | ".join([side, *(cell(scores[task][side][str(b)])
                                                    for b in budgets)]) + " |")
        lines.append("| ours vs the official seeds | " + " | ".join(
            verdicts[task][str(b)] or "–" for b in budgets) + " |")
        lines += ["", metrics_table(p, task), "", hours_line(p, hours, task), ""]
        sections.append("\n".join(lines))
        curves = [plotting.aggregate(side, runs, p["plot-bin"])
                  for side, runs in by_side.items() if runs]
        if curves:
            out = p["root"] / f"parity_{task}.png"
            plotting.plot(curves, KEY, out, f"{task}: ours vs official (dmc_proprio, train "
                          f"ratio {p['train-ratio']})", xmax=p["steps"])
            plots.append(str(out))
    text = (f"{KEY} (training episodes): mean ± std over seeds (n) of each seed's mean in "
            f"(budget - {width:,}, budget] env steps. Both sides: dmc_proprio (size1m, action "
            f"repeat 1, batch 16 x 64), train ratio {p['train-ratio']}, {p['envs']} env(s), "
            "float32 on the CPU. 'within': ours' mean lies in the official seeds' range.\n\n"
            + "\n".join(sections))
    p["root"].mkdir(parents=True, exist_ok=True)
    (p["root"] / "parity.md").write_text(text + "\n")
    return text, {"scores": scores, "verdicts": verdicts, "hours": hours, "plots": plots}


def metrics_table(p: dict, task: str) -> str:
    """Each side's mean over seeds of the training statistics over the same env steps: the last
    bin that both sides have reached, (end - bin, end] with `end` the earlier of the two sides'
    latest episode."""
    ends = [max(int(st[-1]) for st, _ in runs)
            for runs in (side_series(p, side, task) for side in p["sides"]) if runs]
    if not ends:
        return ""
    end = min(ends)

    def mean(side: str, key: str) -> str:
        values = [vals[(steps > end - p["bin"]) & (steps <= end)].mean()
                  for steps, vals in side_series(p, side, task, key)
                  if ((steps > end - p["bin"]) & (steps <= end)).any()]
        return f"{np.mean(values):.3g}" if values else "–"

    window = f"({max(end - p['bin'], 0):,}, {end:,}]"
    lines = [f"| statistic, mean over {window} env steps | ours | official |", "|---|---|---|"]
    for what, ours, official in METRICS:
        lines.append(f"| {what} | {mean('ours', ours)} | {mean('official', official)} |")
    return "\n".join(lines)


def hours_line(p: dict, hours: dict, task: str) -> str:
    parts = []
    for side in p["sides"]:
        h = hours[side].get(task, {})
        parts.append(f"{side} " + (", ".join(f"seed {s}: {v:.2f} h" for s, v in sorted(h.items()))
                                   or "–"))
    return ("Hours per run (wall clock, summed over launches, including any time a run was "
            "stopped): " + "; ".join(parts) + ".")


def main(argv: list[str]) -> int:
    try:
        p = plan(argv)
    except ConfigError as e:
        print(f"parity: {e}", file=sys.stderr)
        return 2
    pairs = runs_of(p)
    skipped = [(s, r) for s, r in pairs if finished(p, r)]
    todo = [] if p["report-only"] else [(s, r) for s, r in pairs if (s, r) not in skipped]
    if skipped:
        say(f"{len(skipped)} of {len(pairs)} runs already finished at {p['steps']} env steps")
    side_of = {r: s for s, r in pairs}
    commands = {"ours": lambda run: ours_command(p, run)}
    if any(s == "official" for s, _ in todo):
        try:
            src = official_source(p["official"], p["cache"])
        except UsageError as e:
            print(f"parity: {e}", file=sys.stderr)
            return 2
        python = official_python(p["cache"])
        commands["official"] = lambda run: official_command(p, run, python, src)
    for _, run in todo:
        close_open(run)  # one launcher per root: an open launch now is one that was killed
    try:
        codes = learn.launch([r for _, r in todo], p["jobs"],
                             lambda run: commands[side_of[run]](run),
                             lambda run, code, seconds: record_exit(p, run, code, seconds),
                             record_tick)
    except KeyboardInterrupt:
        say("stopped; rerun the same command to resume")
        return 130
    failed = [{"side": side_of[r], "task": r.task, "seed": r.seed, "exit": c,
               "log": str(r.logdir / "train.log")} for r, c in codes.items() if c != 0]
    text, summary = report(p)
    print(text)
    print(json.dumps({"root": str(p["root"]), "runs": len(pairs),
                      "finished": sum(c == 0 for c in codes.values()), "failed": failed,
                      "skipped": len(skipped), **summary}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
