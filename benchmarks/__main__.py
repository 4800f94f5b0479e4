"""``python -m benchmarks run --suite quick|full [--parts ...] [--out DIR] [--seed N] [--device cpu|cuda]``, ``list``, ``readme``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.report import summarise, update_readme, write_results
from benchmarks.suites import DEVICES, SUITES, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite; write results.json, report.md and plots")
    run.add_argument("--suite", default="quick", choices=sorted(SUITES))
    run.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench-out/<suite>)"
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--parts", nargs="+", default=None, help="run only these parts of the suite")
    run.add_argument("--device", default="cpu", choices=DEVICES, help="cpu (cuda: not yet)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    commands.add_parser("list", help="list the suites and their parts")
    readme = commands.add_parser(
        "readme", help="regenerate README.md's results section from a results.json"
    )
    readme.add_argument("results", type=Path)
    readme.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, suite in SUITES.items():
            print(f"{name:6s} {suite.description}\n       parts: {', '.join(suite.parts)}")
        return 0
    if args.command == "readme":
        update_readme(args.results, args.readme)
        print(f"updated {args.readme} from {args.results}")
        return 0
    out = args.out or Path("bench-out") / args.suite
    results = run_suite(
        args.suite,
        seed=args.seed,
        progress=not args.no_progress,
        parts=args.parts,
        device=args.device,
    )
    write_results(results, out)
    print(
        f"\nsuite {args.suite!r}: {results['run_info']['seconds']:.0f} s; wrote {out}/results.json, report.md, plots"
    )
    for line in summarise(results):
        print(f"  - {line}")
    print(f"\n{(out / 'report.md').read_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
