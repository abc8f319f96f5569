"""Benchmarks; the last line printed is one JSON object.

  python launch/bench.py params
  python launch/bench.py train-step --configs dmc_proprio size1m [--updates 5] [--warmup 2]
                                    [--key=value ...]
  python launch/bench.py train-step --devices 2 --configs debug   (N devices; fake CPU ones
                                                                    when there is no accelerator)
  python launch/bench.py train-step --per-call 1 4 16 --configs dmc_proprio size1m
                                    (k updates in one jitted call: seconds per update for each k)
  python launch/bench.py actors --actors 1 2 [--seconds 20] [--configs dmc_vision ...]
  python launch/bench.py policy --configs pets --env.task=gym_Pendulum-v1 [--envs 1] [--calls 20]
                                (actions per second of the agent's jitted policy alone)
  python launch/bench.py random --configs minatar [--episodes 100]
                                (the score of a uniformly random policy on the configured task)
  python launch/bench.py replay [--capacity 50000] [--size 64]   (bytes per stored step)
  python launch/bench.py replay-sampling [--sizes 100000 1000000] [--batch 256]
                                 (ms per sample call, uniform and prioritized)
  python launch/bench.py profile --configs dmc_proprio size1m [--updates 3] [--key=value ...]
                                 (shares of the step's time by function, from one trace)
  python launch/bench.py compare --official-src DIR --configs dmc_proprio size1m [--rounds 2]
                                 [--updates 5] [--warmup 2] [--official-bench PATH]
  python launch/bench.py kernels --configs dmc_proprio size1m [--layout cpu|gpu]
                                 [--official-src DIR] [--official-bench PATH] [--key=value ...]
                                 (kernels and while-loop iterations one update launches)

compare: the official DreamerV3 train update (github.com/danijar/dreamerv3 at DIR, a checkout or
its git directory, timed by ../shared/tools/official-bench/run.sh or --official-bench PATH) and
ours (train-step), float32 on the CPU with the same 16 x (64 + 1) batch, each side in a fresh
process, alternating official, ours, ... for --rounds rounds. It prints a table, then
{"compare": {..., "ratio": official median / ours median}} (above 1: ours is faster).

train-step and kernels time the configured agent's update (--configs minatar muzero: MuZero's;
DreamerV3 unless a preset or --agent names another); profile splits DreamerV3's update only.

train-step and kernels take --spaces walker: DMC walker's observation and action spaces without
making the environment (for machines without dm-control); the default, task, makes one.

kernels: counted in the optimized HLO of the compiled update (dreamer.bench.kernels): each launched
instruction once, a while loop's body times its trip count. --layout gpu builds the networks
as on a GPU (batched block matmuls; bfloat16 unless --jax.compute_dtype says otherwise) while
compiling for this machine's backend. With --official-src the official update is counted too
(compiled by its bench, float32 on the CPU) and the ratio official / ours printed, also without
the CPU's rolled random-bit loops (`*_without_rng`: what an accelerator runs as straight-line code).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer.args import Args, Option, choice, integer, number, parse, show_help
from dreamer.bench import benchmark
from dreamer.bench import compare as side_by_side
from dreamer.cli import parse_args
from dreamer.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def updates(default: int) -> Option:
    """The --updates option: how many train updates are timed."""
    return Option("updates", default, integer(1), metavar="N")


WARMUP = Option("warmup", 2, integer(0), metavar="N")
SPACES = Option("spaces", "task", choice(*benchmark.SPACES))
# Each command's own options; those in TAKES_CONFIG also take --configs and config overrides.
OPTIONS = {
    "params": (),
    "replay": (Option("capacity", 50_000, integer(1), metavar="N"),
               Option("size", 64, integer(1), metavar="PIXELS")),
    "replay-sampling": (Option("sizes", (100_000, 1_000_000), integer(1), many=True, metavar="N"),
                        Option("batch", 256, integer(1), metavar="B")),
    "train-step": (updates(5), WARMUP, Option("devices", None, integer(1), metavar="N"),
                   Option("per-call", (), integer(1), many=True, metavar="K"),
                   Option("layout", None, choice("cpu", "gpu")), SPACES),
    "profile": (updates(3), WARMUP),
    "actors": (Option("actors", (1, 2), integer(1), many=True, metavar="N"),
               Option("seconds", 20.0, number(0), metavar="S")),
    "policy": (Option("envs", 1, integer(1), metavar="N"),
               Option("calls", 20, integer(1), metavar="N"), WARMUP),
    "random": (Option("episodes", 100, integer(1), metavar="N"),),
    "kernels": (Option("layout", None, choice("cpu", "gpu")), SPACES,
                Option("official-src", metavar="DIR"), Option("official-bench", metavar="PATH")),
    "compare": (Option("official-src", required=True, metavar="DIR"),
                Option("official-bench", metavar="PATH"),
                Option("configs", (), many=True, required=True, metavar="PRESET"),
                Option("rounds", 2, integer(1), metavar="N"), updates(5), WARMUP),
}
TAKES_CONFIG = {"train-step": (), "profile": (), "actors": ("dmc_vision",),
                "policy": (), "kernels": (), "random": ()}  # default presets


def compare_main(args: Args) -> int:
    """`compare`: a setup problem exits 2, a failed side 1 (with the tail of its stderr)."""
    script_path = side_by_side.official_bench_script(ROOT, args["official-bench"])
    problem = side_by_side.compare_setup_problem(args["official-src"], script_path)
    if problem:
        print(f"bench compare: {problem}", file=sys.stderr)
        return 2
    try:
        summary = side_by_side.compare(
            args["configs"], args["official-src"], script_path, Path(__file__).resolve(),
            rounds=args["rounds"], updates=args["updates"], warmup=args["warmup"],
            log=lambda line: print(f"bench compare: {line}", file=sys.stderr, flush=True))
    except side_by_side.CompareFailed as e:
        print(f"bench compare: {e}", file=sys.stderr)
        if e.stderr_tail:
            print(f"--- the last lines of its stderr ---\n{e.stderr_tail}", file=sys.stderr)
        return 1
    print(side_by_side.compare_table(summary))
    print(json.dumps(summary))
    return 0


def kernels_main(cfg: Config, args: Args) -> dict:
    """`kernels`: ours, and the official update's beside it when its source is given."""
    result = {"kernels": benchmark.kernel_counts(cfg, args["layout"], args["spaces"])}
    if args["official-src"]:
        script = side_by_side.official_bench_script(ROOT, args["official-bench"])
        problem = side_by_side.compare_setup_problem(args["official-src"], script)
        if problem:
            raise side_by_side.CompareFailed(problem)
        official = side_by_side.official_kernels(script, args["official-src"], args["configs"])
        ours = result["kernels"]
        result["official"] = official
        result["ratio"] = {key: official[key] / max(ours[key], 1) for key in (
            "kernels", "loop_iterations", "kernels_without_rng", "loop_iterations_without_rng")}
    return result


def measure(command: str, cfg: Config, args: Args) -> dict:
    """The result of a command that takes a config."""
    if command == "kernels":
        return kernels_main(cfg, args)
    if command == "actors":
        return {"actors": benchmark.actors(cfg, args["actors"], args["seconds"])}
    if command == "random":
        return {"random": benchmark.random_scores(cfg, args["episodes"])}
    if command == "policy":
        return {"policy": benchmark.policy(cfg, args["envs"], args["calls"], args["warmup"])}
    if command == "profile":
        from dreamer.bench import profiling


        with profiling.named_scopes():
            prepared = benchmark.compile_train_step(cfg)
        return {"profile": profiling.profile_train_step(prepared, steps=args["updates"],
                                                        warmup=args["warmup"])}
    if args["per-call"]:
        return {"train_step": benchmark.updates_per_call(
            cfg, args["per-call"], calls=args["updates"], warmup=args["warmup"],
            layout=args["layout"], spaces=args["spaces"])}
    if args["devices"]:
        import jax

        # Fake CPU devices when the backend is the CPU; accelerators are used as they are.
        jax.config.update("jax_num_cpu_devices", args["devices"])
        return {"train_step": benchmark.train_step_parallel(
            cfg, args["devices"], updates=args["updates"], warmup=args["warmup"])}
    return {"train_step": benchmark.train_step(cfg, updates=args["updates"],
                                               warmup=args["warmup"], layout=args["layout"],
                                               spaces=args["spaces"])}


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        show_help(__doc__)
    if not argv or argv[0] not in OPTIONS:
        print(__doc__, file=sys.stderr)
        print(f"bench: choose a command from {', '.join(OPTIONS)}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    try:
        if command in TAKES_CONFIG:
            cfg, args = parse_args(rest, options=OPTIONS[command],
                                   presets=TAKES_CONFIG[command], help_text=__doc__)
        else:
            cfg, args = None, parse(rest, OPTIONS[command], __doc__)
    except ConfigError as e:
        print(f"bench {command}: {e}", file=sys.stderr)
        return 2
    if command == "profile" and cfg.agent != "dreamerv3":
        print(f"bench profile: it splits DreamerV3's update by its modules; for "
              f"--agent={cfg.agent} time the whole update with train-step", file=sys.stderr)
        return 2
    if cfg is not None:  # before JAX starts its backend, which reads XLA_FLAGS once
        from dreamer import xla_flags

        xla_flags.apply(cfg.jax.xla_flags, cfg.jax.platform)
    if command == "compare":
        return compare_main(args)
    if command == "params":
        result = {"params": benchmark.param_counts()}
    elif command == "replay":
        result = {"replay": benchmark.replay_memory(args["capacity"],
                                                    (args["size"], args["size"]))}
    elif command == "replay-sampling":
        from dreamer.bench.sampling import replay_sampling

        result = {"replay_sampling": replay_sampling(tuple(args["sizes"]), args["batch"])}
    else:
        try:
            result = measure(command, cfg, args)
        except side_by_side.CompareFailed as e:  # the official side of `kernels`
            print(f"bench {command}: {e}", file=sys.stderr)
            if e.stderr_tail:
                print(f"--- the last lines of its stderr ---\n{e.stderr_tail}", file=sys.stderr)
            return 1
        result.update(configs=args["configs"], overrides=args.overrides)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
