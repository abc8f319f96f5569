"""Learning curves and a score table from training logdirs.

  python launch/plot.py RUN [RUN ...] [--key eval/score] [--bin 1000] [--budgets 5000,10000]
                        [--out curves.png] [--title TEXT]

A RUN is `LABEL=DIR[,DIR...]` (the runs, e.g. seeds, of one method; shell globs in DIR are
expanded) or a bare logdir, which is a method of its own named after its folder. Each method's
curve is the mean over its runs on a grid of `--bin` env steps with the min-max band; the table
gives mean ± std over runs of each run's mean in the last bin before each budget (by default four
budgets evenly spaced up to the last step). Prints the table (Markdown) and writes the PNG. A RUN
may stand anywhere but right after the values of --budgets, which run up to the next option; after
-- every argument is a RUN.
"""
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer.args import Option, UsageError, integer, parse
from dreamer.bench import plotting

OPTIONS = (
    Option("key", "eval/score"),
    Option("bin", 1000, integer(1), metavar="N"),
    Option("budgets", (), integer(1), many=True, metavar="B"),
    Option("out", "curves.png", metavar="FILE"),
    Option("title", "", metavar="TEXT"),
)


def runs_of(args: list[str]) -> dict[str, list[Path]]:
    """The logdirs of each method named by RUN arguments."""
    runs: dict[str, list[Path]] = {}
    for arg in args:
        label, eq, dirs = arg.partition("=")
        if not eq:
            label, dirs = Path(arg).name, arg
        paths = [Path(p) for d in dirs.split(",") if d for p in sorted(glob.glob(d)) or [d]]
        runs.setdefault(label, []).extend(paths)
    return runs


def main(argv: list[str]) -> int:
    try:
        args = parse(argv, OPTIONS, __doc__, positional=True, rest=True)
        runs = runs_of(args.positional + args.rest)
        if not runs:
            raise UsageError("give at least one RUN (LABEL=DIR[,DIR...] or a logdir)")
    except UsageError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    key, width = args["key"], args["bin"]
    try:
        series = {label: [plotting.read_series(p, key) for p in paths]
                  for label, paths in runs.items()}
    except (FileNotFoundError, ValueError) as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    empty = [str(p) for label, paths in runs.items() for p, s in zip(paths, series[label])
             if len(s[0]) == 0]
    if empty:
        print(f"plot: no {key!r} values in {', '.join(empty)}", file=sys.stderr)
        return 2
    curves = [plotting.aggregate(label, s, width) for label, s in series.items()]
    plotting.plot(curves, key, args["out"], args["title"])
    last = max(int(c.steps[-1]) for c in curves)
    budgets = (args["budgets"]
               or sorted({max(width, last // 4 // width * width * k) for k in (1, 2, 3, 4)}))
    print(plotting.table(series, budgets, width))
    print(f"wrote {args['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
