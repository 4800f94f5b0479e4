"""``python -m benchmarks run --suite quick|full|dense [--parts ...] [--out DIR] [--seed N] [--device cpu|cuda] [--data scenes|nyuv2|cityscapes --data-root DIR] [--resume DIR] [--jobs N] [--skip-missing]``, ``partial RUN``, ``list``, ``readme``.

Exit status of ``run``: 0 when every selected part finished (skipped parts
included), 1 when a part failed (recorded in ``run_info.failed_parts``), 2 when
a part lacks what it needs and ``--skip-missing`` was not given (nothing ran),
130 when interrupted (the finished parts are written; continue with
``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.dense_suite import DENSE_DATA, data_settings
from benchmarks.needs import MissingNeeds
from benchmarks.report import summarise, update_readme
from benchmarks.suites import DEVICES, SUITES, partial_run, previous_run, run_suite

DEFAULTS = {"suite": "quick", "seed": 0, "parts": None, "device": None}
"""``run``'s defaults when not resuming; a resumed run takes the earlier run's instead.

``device`` None: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite; write results.json, report.md and plots")
    run.add_argument("--suite", default=None, choices=sorted(SUITES), help="default quick")
    run.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench-out/<suite>)"
    )
    run.add_argument("--seed", type=int, default=None, help="default 0")
    run.add_argument("--parts", nargs="+", default=None, help="run only these parts of the suite")
    run.add_argument(
        "--device",
        default=None,
        choices=DEVICES,
        help="cpu, or cuda: the dense, cut and pam parts train there (latencies stay CPU); "
        "default cuda when a GPU is visible, else cpu",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="worker processes for the cells of the dense and pam parts (each with cores/N "
        "torch threads); default 1. Every finished cell is stored in the output folder, so "
        "--resume computes only the cells not finished",
    )  # fmt: skip
    run.add_argument(
        "--data",
        default=None,
        choices=DENSE_DATA,
        help="the dense CUT tables' data: the procedural scenes (default) or the real "
        "preprocessed NYUv2 / Cityscapes folders (with --data-root)",
    )
    run.add_argument(
        "--data-root", type=Path, default=None, metavar="DIR",
        help="MTAN/LibMTL's preprocessed DIR/{train,val}/{image,label,depth,normal}/<i>.npy",
    )  # fmt: skip
    run.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the run in DIR: keep the parts it finished with the same config, seed "
        "and code, run the rest (suite, seed, parts and device default to that run's)",
    )
    run.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip the parts whose packages or data are missing (recorded in results.json) "
        "instead of stopping before the first part",
    )
    partial = commands.add_parser(
        "partial",
        help="report an unfinished run so far: finished parts, and the dense and pam parts "
        "from the cells stored (RUN/partial: results.json, report.md, plots)",
    )
    partial.add_argument("run", type=Path, metavar="RUN", help="the run's output folder")
    partial.add_argument("--out", type=Path, default=None, help="default RUN/partial")
    commands.add_parser("list", help="list the suites and their parts")
    readme = commands.add_parser(
        "readme", help="regenerate README.md's results section from a results.json"
    )
    readme.add_argument("results", type=Path)
    readme.add_argument("--readme", type=Path, default=Path("README.md"))
    readme.add_argument(
        "--section", default="results",
        help="the README's generated section to replace (markers <!-- NAME:start/end -->)",
    )  # fmt: skip
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive number of worker processes, got {args.jobs}")
    settings = dict(DEFAULTS)
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            parser.error(f"--resume {args.resume} writes into that folder; drop --out {args.out}")
        try:
            earlier = previous_run(args.resume)["run_info"]
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        settings.update({key: earlier[key] for key in DEFAULTS if key in earlier})
    settings.update({key: getattr(args, key) for key in DEFAULTS if getattr(args, key) is not None})
    overrides = None
    if args.data is not None or args.data_root is not None:
        try:
            overrides = {"dense": data_settings(args.data or "scenes", args.data_root)}
        except ValueError as error:
            parser.error(str(error))
        if "dense" not in SUITES[settings["suite"]].parts:
            parser.error(f"--data applies to the dense part; suite {settings['suite']!r} has none")
    out = args.resume or args.out or Path("bench-out") / settings["suite"]
    if args.resume is None and (out / "results.json").is_file():
        status = json.loads((out / "results.json").read_text()).get("run_info", {}).get("status")
        if status in {"running", "interrupted"}:
            print(f"note: replacing the unfinished run in {out} (--resume {out} continues it)",
                  file=sys.stderr)  # fmt: skip
    stored = sorted((out / "cells").glob("*/*.json")) if args.resume is None else []
    if stored:
        print(f"note: a run without --resume starts afresh: the {len(stored)} cells stored in "
              f"{out / 'cells'} are discarded as its parts start (--resume {out} keeps them)",
              file=sys.stderr)  # fmt: skip
    try:
        results = run_suite(
            settings["suite"],
            seed=settings["seed"],
            progress=not args.no_progress,
            parts=settings["parts"],
            device=settings["device"] or ("cuda" if torch.cuda.is_available() else "cpu"),
            out=out,
            resume=args.resume is not None,
            skip_missing=args.skip_missing,
            overrides=overrides,
            jobs=args.jobs,
        )
    except MissingNeeds as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the finished parts are in {out}/results.json; continue with\n"
            f"  python -m benchmarks run --resume {out}",
            file=sys.stderr,
        )
        return 130
    info = results["run_info"]
    print(
        f"\nsuite {info['suite']!r}: {info['seconds']:.0f} s; wrote {out}/results.json, report.md"
    )
    if info["kept_parts"]:
        print(f"  kept from the earlier run: {', '.join(info['kept_parts'])}")
    for line in summarise(results):
        print(f"  - {line}")
    print(f"\n{(out / 'report.md').read_text()}")
    for part, missing in info["skipped_parts"].items():
        print(f"skipped {part}: missing {'; '.join(missing)}", file=sys.stderr)
    for part, failure in info["failed_parts"].items():
        print(f"FAILED {part}: {failure['error']}\n{failure['traceback']}", file=sys.stderr)
    return 1 if info["failed_parts"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        for name, suite in SUITES.items():
            print(f"{name:6s} {suite.description}\n       parts: {', '.join(suite.parts)}")
        return 0
    if args.command == "partial":
        try:
            results = partial_run(args.run, args.out)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        counts = results["run_info"]["partial_parts"]
        for part, count in counts.items():
            print(f"  {part}: {count['stored']} of {count['of']} cells stored")
        print(f"wrote {args.out or args.run / 'partial'}/results.json, report.md"
              + ("" if counts else " (no part has stored cells yet)"))  # fmt: skip
        return 0
    if args.command == "readme":
        update_readme(args.results, args.readme, section=args.section)
        print(f"updated {args.readme} from {args.results}")
        return 0
    return _run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
