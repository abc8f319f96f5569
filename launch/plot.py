"""Learning curves and a score table from training logdirs.

  python launch/plot.py [--key eval/score] [--bin 1000] [--budgets 5000,10000]
                        [--out curves.png] [--title TEXT] RUN [RUN ...]

A RUN is `LABEL=DIR[,DIR...]` (the runs, e.g. seeds, of one method; shell globs in DIR are
expanded) or a bare logdir, which is a method of its own named after its folder. Each method's
curve is the mean over its runs on a grid of `--bin` env steps with the min-max band; the table
gives mean ± std over runs of each run's mean in the last bin before each budget. Prints the
table (Markdown) and writes the PNG.
"""
import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamer import plotting


def main(argv: list[str]) -> int:
    opts = {"--key": "eval/score", "--bin": "1000", "--budgets": "", "--out": "curves.png",
            "--title": ""}
    runs: dict[str, list[Path]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(__doc__)
            return 0
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in opts:
                print(f"plot: unknown option {name}; options: {', '.join(opts)}", file=sys.stderr)
                return 2
            if not eq:
                i += 1
                if i == len(argv):
                    print(f"plot: {name} needs a value", file=sys.stderr)
                    return 2
                value = argv[i]
            opts[name] = value
        else:
            label, eq, dirs = arg.partition("=")
            if not eq:
                label, dirs = Path(arg).name, arg
            paths = [Path(p) for d in dirs.split(",") if d for p in sorted(glob.glob(d)) or [d]]
            runs.setdefault(label, []).extend(paths)
        i += 1
    if not runs:
        print(__doc__, file=sys.stderr)
        return 2
    width = int(float(opts["--bin"]))
    try:
        series = {label: [plotting.read_series(p, opts["--key"]) for p in paths]
                  for label, paths in runs.items()}
    except (FileNotFoundError, ValueError) as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    empty = [str(p) for label, paths in runs.items() for p, s in zip(paths, series[label])
             if len(s[0]) == 0]
    if empty:
        print(f"plot: no {opts['--key']!r} values in {', '.join(empty)}", file=sys.stderr)
        return 2
    curves = [plotting.aggregate(label, s, width) for label, s in series.items()]
    plotting.plot(curves, opts["--key"], opts["--out"], opts["--title"])
    last = max(int(c.steps[-1]) for c in curves)
    budgets = ([int(float(b)) for b in opts["--budgets"].split(",") if b]
               or sorted({max(width, last // 4 // width * width * k) for k in (1, 2, 3, 4)}))
    print(plotting.table(series, budgets, width))
    print(f"wrote {opts['--out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
