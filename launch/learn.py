"""Train a suite (tasks x seeds to one step budget), then score it against DreamerV3's published
learning curves.

  python launch/learn.py --root DIR [--tasks TASK[,TASK...]] [--seeds 0[,1...]] [--steps N]
                         [--configs PRESET [PRESET ...]] [--jobs 1] [--budgets B[,B...]]
                         [--bin N] [--benchmark NAME] [--report-only] [-- TRAIN ARGS...]

TRAIN ARGS are dreamer-train's `--KEY=VALUE` overrides (`--configs` may go there too); the
command line is checked like dreamer-train's before anything starts. --configs defaults to demo,
--tasks to the presets' env.task, --steps to their run.steps.

Each run is `launch/train.py` in a subprocess with the presets, TRAIN ARGS and `--env.task=TASK
--seed=S --run.steps=N --logdir=DIR/TASK/seed_S`, its output appended to `train.log` in that
logdir; at most --jobs run at a time. A run is finished when its metrics.jsonl holds a complete
eval/score line at a step >= N (training ends with an evaluation at its last step). Rerunning the
command skips finished runs and resumes the others from their checkpoints, so a larger --steps
continues the same runs. A run that exits non-zero is reported with its log; the others go on.

Then (only this with --report-only) it writes DIR/scores.md: per task and budget (--budgets,
default 4 evenly spaced up to N on the --bin grid), mean ± std over seeds (n) of each seed's mean
eval/score in (budget - bin, budget], beside the published DreamerV3 mean at that step (see
dreamer/bench/reference.py), then each run's training time (time/hours: wall-clock hours of the
training loop, evaluations and checkpoints included, summed over resumes) and the env steps it
reached; and DIR/curve_TASK.png: the mean over seeds on a grid of --bin env steps
(default run.eval_every) with the min-max band, and the published curve with its band. The
published curves are those of --benchmark, or of the last of the presets dmc_proprio, dmc_vision,
atari100k. Prints the table; the last line of stdout is one JSON object: root, benchmark, runs,
finished (runs finished now), failed ([{task, seed, exit, log}]), skipped (runs finished before,
so not trained), scores ({task: {budget: {mean, std, n, published}}}), hours ({task: {seed:
{steps, hours}}}) and plots (PNG paths).
Exit status: 0; 1 when a run failed; 2 for a wrong command line; 130 when interrupted (the
trainers save a checkpoint; rerun to resume).
"""
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamer.args import Option, UsageError, integer, parse
from dreamer.bench import plotting, reference
from dreamer.cli import DEFAULT_PRESET, parse_args
from dreamer.config import ConfigError

KEY = "eval/score"
TIME = "time/hours"
OPTIONS = (
    Option("root", required=True, metavar="DIR"),
    Option("tasks", (), many=True, metavar="TASK"),
    Option("seeds", (0,), integer(0), many=True, metavar="SEED"),
    Option("steps", None, integer(1), metavar="N"),
    Option("configs", (), many=True, metavar="PRESET"),
    Option("jobs", 1, integer(1), metavar="N"),
    Option("budgets", (), integer(1), many=True, metavar="B"),
    Option("bin", None, integer(1), metavar="N"),
    Option("benchmark", "", metavar="NAME"),
    Option("report-only", False, switch=True),
)
PER_RUN = {"env.task": "--tasks", "seed": "--seeds", "run.steps": "--steps", "logdir": "--root"}
PUBLISHED = "DreamerV3"


@dataclass(frozen=True)
class Suite:
    """What to train and how to report it."""

    root: Path
    tasks: list[str]
    seeds: list[int]
    steps: int
    train_args: list[str]  # presets and overrides, as given to launch/train.py
    presets: list[str]
    jobs: int
    budgets: list[int]
    width: int  # env steps per bin of the curves and the score windows
    benchmark: str | None
    report_only: bool


@dataclass(frozen=True)
class Run:
    task: str
    seed: int
    logdir: Path


def default_budgets(steps: int, width: int) -> list[int]:
    """Four budgets evenly spaced up to `steps`, each rounded down to the grid of `width`."""
    return sorted({max(width, steps * k // 4 // width * width) for k in (1, 2, 3, 4)})


def benchmark_of(presets: list[str], explicit: str) -> str | None:
    """The benchmark of the published curves: `explicit`, else the last preset named after one."""
    if explicit:
        reference.tasks(explicit)  # names the valid benchmarks when there is no such one
        return explicit
    return next((p for p in reversed(presets) if p in reference.benchmarks()), None)


def plan(argv: list[str]) -> Suite:
    """The suite of a command line; UsageError, ConfigError or reference.UnknownCurve say what is
    wrong with it."""
    args = parse(argv, OPTIONS, __doc__, rest=True)
    presets = ["--configs", *args["configs"]] if args["configs"] else []
    cfg, given = parse_args([*presets, *args.rest], presets=(DEFAULT_PRESET,))
    clashes = [f"--{k} (use {PER_RUN[k]})" for k in given.overrides if k in PER_RUN]
    if clashes:
        raise UsageError(f"set per run by learn.py, not in the train args: {', '.join(clashes)}")
    steps = args["steps"] or cfg.run.steps
    width = args["bin"] or cfg.run.eval_every or steps
    return Suite(
        root=Path(args["root"]), tasks=args["tasks"] or [cfg.env.task], seeds=args["seeds"],
        steps=steps,
        train_args=["--configs", *given["configs"],
                    *(f"--{key}={text}" for key, text in given.overrides.items())],
        presets=given["configs"], jobs=args["jobs"],
        budgets=args["budgets"] or default_budgets(steps, width), width=width,
        benchmark=benchmark_of(given["configs"], args["benchmark"]),
        report_only=args["report-only"])


def runs_of(suite: Suite) -> list[Run]:
    """Every (task, seed) of the suite with its logdir ROOT/TASK/seed_S, seed by seed, so that
    a suite stopped early has covered every task with its first seeds."""
    return [Run(t, s, suite.root / t / f"seed_{s}") for s in suite.seeds for t in suite.tasks]


def scores(logdir: Path, key: str = KEY) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a run's `key` (its evaluations); empty when it has not started."""
    try:
        return plotting.read_series(logdir, key)
    except FileNotFoundError:
        return np.zeros(0, np.int64), np.zeros(0)


def finished(logdir: Path, steps: int) -> bool:
    """Whether a run has evaluated at `steps` or later. A line cut short by a kill does not count
    (`read_series` drops it), so a run killed while writing its final line is not finished."""
    done = scores(logdir)[0]
    return bool(len(done)) and int(done[-1]) >= steps


def command(suite: Suite, run: Run) -> list[str]:
    """The training command of one run."""
    return [sys.executable, str(ROOT / "launch" / "train.py"), *suite.train_args,
            f"--env.task={run.task}", f"--seed={run.seed}", f"--run.steps={suite.steps}",
            f"--logdir={run.logdir}"]


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the suite as Ctrl-C does


def say(text: str) -> None:
    print(f"learn: {text}", file=sys.stderr, flush=True)


def train(suite: Suite, runs: list[Run]) -> dict[Run, int]:
    """Trains the runs with launch/train.py (`command`), at most `suite.jobs` at a time."""
    return launch(runs, suite.jobs, lambda run: command(suite, run))


def launch(runs: list[Run], jobs: int, command_of: Callable[[Run], list[str]],
           on_exit: Callable[[Run, int, float], None] | None = None,
           on_tick: Callable[[Run, float], None] | None = None,
           tick: float = 60.0) -> dict[Run, int]:
    """Runs `command_of(run)` for each run, at most `jobs` at a time, its output appended to
    `train.log` in the run's logdir; returns each one's exit status. `on_exit(run, status,
    seconds)` is called as each process ends, also when an interrupt stops it; `on_tick(run,
    seconds)` every `tick` seconds while it runs (what a killed launcher leaves behind). On an
    interrupt the running trainers are stopped (they save a checkpoint) before it propagates."""
    waiting, active, codes = list(runs), {}, {}
    ticked: dict[Run, float] = {}
    previous = signal.signal(signal.SIGTERM, interrupt)

    def ended(run: Run, proc: subprocess.Popen, log, started: float) -> None:
        log.close()
        if on_exit is not None:
            on_exit(run, proc.returncode, time.time() - started)

    try:
        while waiting or active:
            while waiting and len(active) < jobs:
                run = waiting.pop(0)
                run.logdir.mkdir(parents=True, exist_ok=True)
                log = (run.logdir / "train.log").open("a")
                cmd = command_of(run)
                log.write(f"learn: {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
                log.flush()
                # A session of its own: a Ctrl-C reaches the trainers once, through `finally`.
                active[run] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True), log, time.time())
                say(f"training {run.logdir} (log: {run.logdir / 'train.log'})")
            for run, (proc, log, started) in list(active.items()):
                if proc.poll() is None:
                    now = time.time()
                    if on_tick is not None and now - ticked.get(run, started) >= tick:
                        ticked[run] = now
                        on_tick(run, now - started)
                    continue
                del active[run]
                ended(run, proc, log, started)
                codes[run] = proc.returncode
                took = f"{time.time() - started:.0f} s"
                say(f"{run.logdir}: done in {took}" if proc.returncode == 0 else
                    f"{run.logdir} FAILED (exit {proc.returncode} after {took}); "
                    f"log: {run.logdir / 'train.log'}")
            if active:
                time.sleep(0.5)
    finally:
        for proc, _, _ in active.values():
            proc.terminate()  # the trainer saves its replay and a checkpoint, then exits
        for run, (proc, log, started) in active.items():
            proc.wait()
            ended(run, proc, log, started)
        signal.signal(signal.SIGTERM, previous)
    return codes


def series_of(suite: Suite) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per task, the evaluations of its runs that have any."""
    return {task: [s for s in (scores(r.logdir) for r in runs_of(suite) if r.task == task)
                   if len(s[0])] for task in suite.tasks}


def published_at(suite: Suite) -> dict[str, list[float | None]]:
    """Per task with a published curve in the suite's benchmark, its value at each budget."""
    known = reference.tasks(suite.benchmark) if suite.benchmark else []
    return {task: [reference.value_at(suite.benchmark, task, b) for b in suite.budgets]
            for task in suite.tasks if task in known}


def summaries(suite: Suite, series: dict, published: dict) -> dict[str, dict[str, dict]]:
    """Per task and budget: mean, std and n over seeds, and the published value (or None)."""
    out: dict[str, dict[str, dict]] = {}
    for task, runs in series.items():
        out[task] = {}
        for i, budget in enumerate(suite.budgets):
            mean, std, n = plotting.summary(runs, budget, suite.width) or (None, None, 0)
            out[task][str(budget)] = {"mean": mean, "std": std, "n": n,
                                      "published": published[task][i] if task in published
                                      else None}
    return out


def times(suite: Suite) -> dict[str, dict[str, dict]]:
    """Per task and seed that has logged it: the env steps reached and the hours trained then
    (`time/hours`, which a resumed run carries on from its checkpoint)."""
    out: dict[str, dict[str, dict]] = {}
    for run in runs_of(suite):
        steps, hours = scores(run.logdir, TIME)
        if len(steps):
            out.setdefault(run.task, {})[str(run.seed)] = {"steps": int(steps[-1]),
                                                            "hours": float(hours[-1])}
    return out


def times_table(suite: Suite, hours: dict[str, dict[str, dict]]) -> str:
    """Markdown: a row per task, a column per seed, each cell `hours h (env steps)`."""
    head = ["task", *(f"seed {s}" for s in suite.seeds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in suite.tasks:
        cells = [hours.get(task, {}).get(str(s)) for s in suite.seeds]
        lines.append("| " + " | ".join([task, *(
            "–" if c is None else f"{c['hours']:.2f} h ({c['steps']:,})"
            for c in cells)]) + " |")
    return "\n".join(lines)


def published_curve(benchmark: str, task: str, until: int) -> plotting.Curve:
    """The published curve as a `Curve`, up to the first bin that ends at or after `until`."""
    p = reference.published(benchmark, task)
    n = int(np.searchsorted(p.steps, until)) + 1
    return plotting.Curve(f"{PUBLISHED}, published", int(p.seeds.max()), p.steps[:n], p.mean[:n],
                          np.full(len(p.steps[:n]), np.nan),  # not published
                          p.min[:n], p.max[:n], p.seeds[:n])


def write_plots(suite: Suite, series: dict, published: dict) -> list[str]:
    """Writes ROOT/curve_TASK.png for each task with evaluations; returns their paths."""
    paths = []
    for task, runs in series.items():
        if not runs:
            continue
        out = suite.root / f"curve_{task}.png"
        ours = plotting.aggregate(f"ours, {' '.join(suite.presets)}", runs, suite.width)
        refs = ([published_curve(suite.benchmark, task, suite.steps)] if task in published
                else [])
        plotting.plot([ours], KEY, out, task + (f" ({suite.benchmark})" if refs else ""),
                      references=refs, xmax=suite.steps)
        paths.append(str(out))
    return paths


def report(suite: Suite) -> tuple[str, dict, dict, list[str]]:
    """Writes ROOT/scores.md and the curves; returns the text of scores.md, the `summaries`, the
    `times` and the PNG paths."""
    series, published = series_of(suite), published_at(suite)
    table = plotting.table(series, suite.budgets, suite.width,
                           published if suite.benchmark else None, PUBLISHED, rows="task")
    note = (f"{KEY}: mean ± std over seeds (n) of each seed's mean in (budget - {suite.width}, "
            f"budget] env steps; presets {' '.join(suite.presets)}.")
    if suite.benchmark:
        note += (f" {PUBLISHED}: the published {suite.benchmark} mean over seeds in the 10K-step "
                 "bin that ends at or after the budget (dreamer/bench/reference.py).")
    hours = times(suite)
    text = (f"{note}\n\n{table}\n\nTraining time per run ({TIME}: wall-clock hours of the "
            f"training loop, evaluations and checkpoints included, summed over resumes) and the "
            f"env steps it reached:\n\n{times_table(suite, hours)}")
    suite.root.mkdir(parents=True, exist_ok=True)
    (suite.root / "scores.md").write_text(text + "\n")
    return text, summaries(suite, series, published), hours, write_plots(suite, series,
                                                                         published)


def main(argv: list[str]) -> int:
    try:
        suite = plan(argv)
    except (ConfigError, reference.UnknownCurve) as e:
        print(f"learn: {e}", file=sys.stderr)
        return 2
    runs = runs_of(suite)
    skipped = [r for r in runs if finished(r.logdir, suite.steps)]
    todo = [] if suite.report_only else [r for r in runs if r not in skipped]
    if skipped:
        say(f"{len(skipped)} of {len(runs)} runs already finished at {suite.steps} env steps")
    try:
        codes = train(suite, todo)
    except KeyboardInterrupt:
        say("stopped; the runs saved checkpoints (run the same command again to resume)")
        return 130
    failed = [{"task": r.task, "seed": r.seed, "exit": c, "log": str(r.logdir / "train.log")}
              for r, c in codes.items() if c != 0]
    try:
        text, table, hours, plots = report(suite)
    except ValueError as e:  # a metrics.jsonl that is not JSON lines
        print(f"learn: {e}", file=sys.stderr)
        return 2
    print(text)
    print(json.dumps({
        "root": str(suite.root), "benchmark": suite.benchmark, "runs": len(runs),
        "finished": sum(finished(r.logdir, suite.steps) for r in todo), "failed": failed,
        "skipped": len(skipped), "scores": table, "hours": hours, "plots": plots}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
