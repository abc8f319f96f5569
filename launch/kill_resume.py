"""Kill a training run with SIGKILL at random moments, resume it each time, and check the result.

  python launch/kill_resume.py [--kills 3] [--min 60] [--max 150] [--seed 0] -- TRAIN ARGS...

TRAIN ARGS go to `launch/train.py` and must include `--logdir DIR`. Each of the --kills kills
comes a random time between --min and --max seconds into its attempt (drawn from --seed). After
the last resume the run goes to its end. Printed: each kill (seconds into the attempt, the
checkpoint the next attempt resumed from), the evaluation scores by env step, and the checks that
the replay holds every step once and the update count follows the train ratio. The last line is
one JSON object.
"""
import json
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamer.args import Option, UsageError, integer, number, parse
from dreamer.cli import parse_args
from dreamer.config import Config, ConfigError
from dreamer.replay import stored_stamps
from dreamer.run.checkpoint import Checkpointer
from dreamer.run.clocks import updates_due

OPTIONS = (
    Option("kills", 3, integer(0), metavar="N"),
    Option("min", 60.0, number(0), metavar="S"),
    Option("max", 150.0, number(0), metavar="S"),
    Option("seed", 0, integer(), metavar="N"),
)


def latest(logdir: Path) -> dict | None:
    ckpt = Checkpointer(logdir / "checkpoints")
    try:
        return ckpt.latest_meta()
    finally:
        ckpt.close()


def main(argv: list[str]) -> int:
    try:
        args = parse(argv, OPTIONS, __doc__, rest=True)
        if not args.rest:
            raise UsageError("give the training command line after -- (see --help)")
        cfg, _ = parse_args(args.rest)
        if not cfg.logdir:
            raise UsageError("give --logdir DIR among the train args")
    except ConfigError as e:
        print(f"kill_resume: {e}", file=sys.stderr)
        return 2
    logdir = Path(cfg.logdir)
    rng = random.Random(args["seed"])
    command = [sys.executable, str(ROOT / "launch" / "train.py"), *args.rest]
    kills = []
    for attempt in range(args["kills"] + 1):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        if attempt < args["kills"]:
            delay = rng.uniform(args["min"], args["max"])
            try:
                proc.wait(timeout=delay)
                print("kill_resume: the run ended before the kill", file=sys.stderr)
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            err = proc.stderr.read()
            kills.append({"after_s": round(delay, 1),
                          "resumed_from": re.findall(r"resumed (\S+): (.*)", err)})
            meta = latest(logdir)
            kills[-1]["checkpoint_env_steps"] = meta and meta["env_steps"]
            print(f"kill {attempt + 1}: SIGKILL after {delay:.0f} s; newest checkpoint at "
                  f"{kills[-1]['checkpoint_env_steps']} env steps", flush=True)
        else:
            err = proc.communicate()[1]
            if proc.returncode != 0:
                print(err, file=sys.stderr)
                return proc.returncode
            print("final attempt: " + "; ".join(
                f"resumed {a}: {b}" for a, b in re.findall(r"resumed (\S+): (.*)", err)))
    meta = latest(logdir)
    cfg = Config.load(logdir / "config.yaml")
    agent_steps = meta["counters"]["agent_steps"]
    expected = updates_due(cfg, agent_steps, max(cfg.parallel.devices, 1))
    stamps = stored_stamps(logdir / "replay").tolist()
    lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    evals = [(x["step"], round(x["eval/score"], 2)) for x in lines if "eval/score" in x]
    result = {
        "kills": kills, "env_steps": meta["env_steps"], "updates": meta["updates"],
        "updates_expected": expected, "replay_steps": len(stamps),
        "replay_each_step_once": stamps == list(range(meta["replay"]["inserts"])),
        "replay_inserts": meta["replay"]["inserts"], "agent_steps": agent_steps,
        "evals": evals,
    }
    for step, score in evals:
        print(f"eval at {step}: {score}")
    print(json.dumps(result))
    ok = result["replay_each_step_once"] and expected == meta["updates"]
    return 0 if ok and result["replay_inserts"] == agent_steps else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
