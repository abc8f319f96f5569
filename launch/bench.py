"""Benchmarks; the last line printed is one JSON object.

  python launch/bench.py params
  python launch/bench.py train-step --configs dmc_proprio size1m [--updates 5] [--warmup 2]
                                    [--key=value ...]
  python launch/bench.py train-step --devices 2 --configs debug   (N devices; fake CPU ones
                                                                    when there is no accelerator)
  python launch/bench.py actors --actors 1 2 [--seconds 20] [--configs dmc_vision ...]
  python launch/bench.py replay [--capacity 50000] [--size 64]   (bytes per stored step)
  python launch/bench.py profile --configs dmc_proprio size1m [--updates 3] [--key=value ...]
                                 (shares of the step's time by function, from one trace)
  python launch/bench.py compare --official-src DIR --configs dmc_proprio size1m [--rounds 2]
                                 [--updates 5] [--warmup 2] [--official-bench PATH]

compare: the official DreamerV3 train update (github.com/danijar/dreamerv3 at DIR, a checkout or
its git directory, timed by ../shared/tools/official-bench/run.sh or --official-bench PATH) and
ours (train-step), float32 on the CPU with the same 16 x (64 + 1) batch, each side in a fresh
process, alternating official, ours, ... for --rounds rounds. It prints a table, then
{"compare": {..., "ratio": official median / ours median}} (above 1: ours is faster).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer import benchmark
from dreamer import compare as side_by_side
from dreamer.cli import parse_args
from dreamer.config import ConfigError

COMMANDS = ("params", "train-step", "actors", "replay", "compare", "profile")
ROOT = Path(__file__).resolve().parent.parent


def take(rest: list[str], flag: str, count: int = 1) -> tuple[list[str], list[str]]:
    """Removes `flag` and the values after it (`count`, or all up to the next --flag if 0)."""
    if flag not in rest:
        return rest, []
    i = rest.index(flag)
    j = i + 1
    while j < len(rest) and not rest[j].startswith("--") and (count == 0 or j - i <= count):
        j += 1
    return rest[:i] + rest[j:], rest[i + 1:j]


def compare_main(rest: list[str]) -> int:
    """`compare`: usage errors exit 2, a failed side 1 (with the tail of its stderr)."""
    rest, src = take(rest, "--official-src")
    rest, script = take(rest, "--official-bench")
    rest, configs = take(rest, "--configs", 0)
    counts, bad = {}, []
    for flag, default, least in ("--rounds", 2, 1), ("--updates", 5, 1), ("--warmup", 2, 0):
        given = flag in rest
        rest, value = take(rest, flag)
        text = value[0] if value else "" if given else str(default)
        if text.isdigit() and int(text) >= least:
            counts[flag[2:]] = int(text)
        else:
            bad.append(f"{flag} {text!r}")
    bad += rest
    if bad or not src or not configs:
        print(__doc__, file=sys.stderr)
        print("bench compare: give --official-src DIR and --configs NAMES...; --rounds and "
              "--updates take a positive integer, --warmup one of at least 0"
              + (f" (not {', '.join(bad)})" if bad else ""), file=sys.stderr)
        return 2
    script_path = side_by_side.official_bench_script(ROOT, script[0] if script else None)
    problem = side_by_side.compare_setup_problem(src[0], script_path)
    if problem:
        print(f"bench compare: {problem}", file=sys.stderr)
        return 2
    try:
        summary = side_by_side.compare(
            configs, src[0], script_path, Path(__file__).resolve(), **counts,
            log=lambda line: print(f"bench compare: {line}", file=sys.stderr, flush=True))
    except side_by_side.CompareFailed as e:
        print(f"bench compare: {e}", file=sys.stderr)
        if e.stderr_tail:
            print(f"--- the last lines of its stderr ---\n{e.stderr_tail}", file=sys.stderr)
        return 1
    print(side_by_side.compare_table(summary))
    print(json.dumps(summary))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        print(f"bench: choose a command from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "compare":
        return compare_main(rest)
    if command == "params":
        result = {"params": benchmark.param_counts()}
        print(json.dumps(result))
        return 0
    if command == "replay":
        rest, capacity = take(rest, "--capacity")
        rest, size = take(rest, "--size")
        if rest:
            print(f"bench: replay takes --capacity N and --size PIXELS, not {rest}",
                  file=sys.stderr)
            return 2
        side = int(size[0]) if size else 64
        print(json.dumps({"replay": benchmark.replay_memory(
            int(float(capacity[0])) if capacity else 50_000, (side, side))}))
        return 0
    rest, updates = take(rest, "--updates")
    rest, warmup = take(rest, "--warmup")
    rest, devices = take(rest, "--devices")
    rest, counts = take(rest, "--actors", 0)
    rest, seconds = take(rest, "--seconds")
    if command == "actors" and not any(a == "--configs" or a.startswith("--configs=")
                                       for a in rest):
        rest = ["--configs", "dmc_vision", *rest]
    try:
        cfg, info = parse_args(rest)
    except ConfigError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if command == "actors":
        counts = [int(c) for c in counts] or [1, 2]
        result = {"actors": benchmark.actors(cfg, counts, float(seconds[0]) if seconds else 20.0)}
    elif command == "profile":
        from dreamer import profiling

        with profiling.named_scopes():
            prepared = benchmark.compile_train_step(cfg)
        result = {"profile": profiling.profile_train_step(
            prepared, steps=int(updates[0]) if updates else 3,
            warmup=int(warmup[0]) if warmup else 2)}
    elif devices:
        import jax

        # Fake CPU devices when the backend is the CPU; accelerators are used as they are.
        jax.config.update("jax_num_cpu_devices", int(devices[0]))
        result = {"train_step": benchmark.train_step_parallel(
            cfg, int(devices[0]), updates=int(updates[0]) if updates else 5,
            warmup=int(warmup[0]) if warmup else 2)}
    else:
        result = {"train_step": benchmark.train_step(
            cfg, updates=int(updates[0]) if updates else 5,
            warmup=int(warmup[0]) if warmup else 2)}
    result.update(configs=info["presets"], overrides=info["overrides"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
