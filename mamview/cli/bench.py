"""`mamview bench WHAT`: registers every benchmark and publishes its figures in one format (a
text table on stdout, optionally the figures as JSON). The measuring code is `mamview.bench`;
each benchmark's modules are imported when it runs (`infer` needs torch, `gui` needs Qt)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mamview.cli.common import CliError
from mamview.core.paths import Library


def register(sub: argparse._SubParsersAction) -> None:
    """Add `bench` and its benchmarks (`import`, `infer`, `net`, `gui`) to `sub`."""
    s = sub.add_parser("bench", help="measure performance figures")
    bench = s.add_subparsers(dest="bench", metavar="WHAT", required=True)

    b = bench.add_parser("import", help="header indexing and preview generation rates")
    b.add_argument("--patients", type=int, default=6, metavar="N",
                   help="women in the generated cohort (default 6)")
    b.add_argument("--size", choices=("small", "full"), default="full",
                   help="image size of the generated cohort (default full)")
    b.add_argument("--work", metavar="DIR", help="folder for the generated cohort (kept)")
    _json_option(b)
    b.set_defaults(func=cmd_bench_import)

    b = bench.add_parser("infer", help="seconds per exam on CPU (and GPU where present)")
    b.add_argument("--height", type=int, default=2048, metavar="ROWS",
                   help="model input height in pixels (default 2048, Mirai's)")
    b.add_argument("--width", type=int, default=1664, metavar="COLUMNS",
                   help="model input width in pixels (default 1664, Mirai's)")
    b.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 on CPU; 1 8 32 on GPU)")
    b.add_argument("--repeats", type=int, default=2, metavar="N",
                   help="timed rounds after one warm-up; the median is reported (default 2)")
    _json_option(b)
    b.set_defaults(func=cmd_bench_infer)

    b = bench.add_parser("net", help="instances/s received and indexed from dcmtk storescu on "
                                     "loopback")
    b.add_argument("--patients", type=int, default=6, metavar="N",
                   help="women in the generated cohort that is sent (default 6)")
    b.add_argument("--size", choices=("small", "full"), default="small",
                   help="image size of the generated cohort (default small)")
    b.add_argument("--no-previews", action="store_true", help="index headers only")
    b.add_argument("--work", metavar="DIR", help="folder for the cohort and the scratch library (kept)")
    _json_option(b)
    b.set_defaults(func=cmd_bench_net)

    b = bench.add_parser("gui", help="window: patient switch to tiles drawn, event-loop stall "
                                     "while CPU inference runs (offscreen)")
    b.add_argument("--size", choices=("small", "full"), default="full",
                   help="image size of the generated 6-exam woman (default full)")
    b.add_argument("--work", metavar="DIR", help="folder for the generated data (kept)")
    b.add_argument("--repeats", type=int, default=15, metavar="N",
                   help="patient switches timed per layout, cold and warm (default 15)")
    b.add_argument("--stall-seconds", type=float, default=8.0,
                   help="how long to watch the event loop while inference runs")
    _json_option(b)
    b.set_defaults(func=cmd_bench_gui)

    b = bench.add_parser("score", help="exams/s of the scoring pipeline end to end (decode, "
                                       "preprocess, model, write) and model-only; CPU with 1 "
                                       "and 2 decode workers, CUDA batches and precisions "
                                       "where present")
    b.add_argument("--model", choices=("mirai", "demo", "both"), default="both",
                   help="which network: full Mirai at 2048x1664 (random weights), the bundled "
                        "demo model, or both (default both)")
    b.add_argument("--exams", type=int, default=None, metavar="N",
                   help="exams in the generated archive (default: a size that runs in minutes "
                        "on this machine)")
    b.add_argument("--size", choices=("small", "full"), default="full",
                   help="image size of the generated archive (default full: real mammogram "
                        "sizes, as a clinic's archive has)")
    b.add_argument("--work", metavar="DIR", help="folder for the generated archive (kept and "
                                                 "reused by later runs)")
    _json_option(b)
    b.set_defaults(func=cmd_bench_score)

    b = bench.add_parser("cohort", help="cohort analysis at the seed study's scale: a "
                                        "synthetic score table written straight into a cache")
    b.add_argument("--women", type=int, default=54000, metavar="N",
                   help="women in the synthetic cohort (default 54000, the seed study's)")
    b.add_argument("--exams", type=int, default=160000, metavar="N",
                   help="scored exams in all (default 160000)")
    b.add_argument("--check-women", type=int, default=1000, metavar="N",
                   help="women of the subset refitted with statsmodels to check agreement "
                        "(default 1000; 0: no check)")
    b.add_argument("--work", metavar="DIR", help="folder for the synthetic library (kept)")
    _json_option(b)
    b.set_defaults(func=cmd_bench_cohort)


def _json_option(b: argparse.ArgumentParser) -> None:
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def _publish(args, fig: dict, rows: list[tuple[str, str]]) -> int:
    """Print the table of `fig` and write it as JSON to --json; the one output of every bench."""
    from mamview.bench.format import report

    print(report(args.bench, fig, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    return 0


def cmd_bench_import(args, lib: Library) -> int:
    """Header indexing and preview rates on a generated cohort (not the user's library)."""
    from mamview.bench import imports

    fig = imports.measure(args.patients, args.size, args.work)
    return _publish(args, fig, imports.rows(fig))


def cmd_bench_infer(args, lib: Library) -> int:
    """Seconds per exam of the Mirai forward, CPU and GPU."""
    from mamview.bench import infer

    fig = infer.measure(args.height, args.width, args.batch, args.repeats)
    return _publish(args, fig, infer.rows(fig))


def cmd_bench_net(args, lib: Library) -> int:
    """Instances/s a storage node takes in from storescu on loopback (a scratch library)."""
    from mamview.bench import net

    try:
        fig = net.measure(args.patients, args.size, work=args.work,
                          make_previews=not args.no_previews)
    except RuntimeError as exc:  # dcmtk missing, or a step that failed: said in its message
        raise CliError(str(exc)) from exc
    return _publish(args, fig, net.rows(fig))


def cmd_bench_gui(args, lib: Library) -> int:
    """The reading window, offscreen: patient switch and event-loop stall."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from mamview.bench import gui

    fig = gui.measure(args.size, args.repeats, args.stall_seconds, work=args.work)
    return _publish(args, fig, gui.rows(fig))


def cmd_bench_score(args, lib: Library) -> int:
    """Exams/s of the scoring pipeline on a generated archive (not the user's library)."""
    from mamview.bench import score

    fig = score.measure(args.model, args.exams, work=args.work, size=args.size)
    return _publish(args, fig, score.rows(fig))


def cmd_bench_cohort(args, lib: Library) -> int:
    """`mamview cohort` on a synthetic cache of the seed study's size."""
    from mamview.bench import cohort

    fig = cohort.measure(args.women, args.exams, args.check_women, work=args.work)
    return _publish(args, fig, cohort.rows(fig))
