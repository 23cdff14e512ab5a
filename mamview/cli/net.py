"""Commands of the net area: `listen` (headless DICOM node), `echo`, `fetch-priors`.

`mamview bench net` is registered with the other benchmarks (`mamview.cli.bench`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from mamview.cli.common import EXIT_INTERRUPTED, CliError, open_db, print_json
from mamview.core.paths import Library

DEFAULT_PORT = 11112
DEFAULT_AE = "MAMVIEW"


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's commands to `sub`."""
    s = sub.add_parser("listen", help="run as a DICOM storage node: receive, index and score "
                                      "mammograms (headless; Ctrl-C stops)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    s.add_argument("--ae-title", default=DEFAULT_AE, help=f"our AE title (default {DEFAULT_AE})")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    s.add_argument("--allow-ae", action="append", default=[], metavar="AE",
                   help="accept only this calling AE title (repeatable)")
    s.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="accept only this peer address, network (10.0.0.0/24) or name (repeatable)")
    s.add_argument("--allow-any", action="store_true",
                   help="accept any calling AE title from any address (not recommended: anyone "
                        "who reaches the port can store into the library); one of --allow-ae, "
                        "--allow-host or --allow-any is required")
    d = _default_limits()
    s.add_argument("--max-associations", type=int, default=d.max_associations, metavar="N",
                   help=f"connections served at once, in all (default {d.max_associations})")
    s.add_argument("--max-per-peer", type=int, default=d.max_per_peer, metavar="N",
                   help=f"connections served at once from one address (default {d.max_per_peer})")
    s.add_argument("--max-instance-mb", type=int, default=d.max_instance_bytes >> 20,
                   metavar="MB", help="largest instance accepted, in MiB (default "
                                      f"{d.max_instance_bytes >> 20}); a larger one is aborted")
    s.add_argument("--no-score", action="store_true", help="do not score complete exams")
    s.add_argument("--model", default=None, help="model id (default: the settings' model)")
    s.add_argument("--device", default=None, choices=("auto", "cpu", "cuda", "mps"),
                   help="inference device for scoring on arrival (default: from Settings)")
    s.add_argument("--quiet", action="store_true", help="log to the log file only")
    s.set_defaults(func=cmd_listen)

    s = sub.add_parser("echo", help="test a DICOM node with C-ECHO")
    s.add_argument("node", metavar="AE@HOST:PORT", help="the node, or the name of a PACS in the settings")
    s.add_argument("--our-ae", default=DEFAULT_AE, help=f"our AE title (default {DEFAULT_AE})")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    s.set_defaults(func=cmd_echo)

    s = sub.add_parser("fetch-priors", help="bring a woman's earlier studies from a PACS "
                                            "(C-FIND, C-MOVE to our node; Ctrl-C cancels)")
    s.add_argument("patient", metavar="PATIENT", help="PatientID")
    s.add_argument("--pacs", required=True, metavar="AE@HOST:PORT",
                   help="the PACS, or the name of a PACS in the settings")
    s.add_argument("--our-ae", default=DEFAULT_AE,
                   help=f"our AE title, known to the PACS as a move destination (default {DEFAULT_AE})")
    s.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port of our storage node; one is started there for the transfer when "
                        f"none runs (default {DEFAULT_PORT})")
    s.add_argument("--host", default="0.0.0.0", help="address the temporary node listens on")
    s.add_argument("--move-destination", metavar="AE", help="send to this AE instead of ours")
    s.add_argument("--all", dest="all_studies", action="store_true",
                   help="every study the library lacks, also those dated on or after her "
                        "latest exam here (default: only her priors, the earlier ones)")
    s.add_argument("--issuer", default=None, metavar="ISSUER",
                   help="IssuerOfPatientID to query with (default: the library's for her, "
                        "when it knows one; '' sends none)")
    s.add_argument("--all-modalities", action="store_true", help="not only MG studies")
    s.add_argument("--score", action="store_true", help="score the fetched exams on arrival")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="network timeout in seconds (default 30)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_fetch_priors)


# ---------------------------------------------------------------- helpers


def _default_limits():
    from mamview.core.net.guard import NodeLimits

    return NodeLimits()


def _listen_limits(args):
    """The node's caps from the command line; MamviewError for a value that makes no sense."""
    import dataclasses

    from mamview.core.errors import MamviewError

    for name in ("max_associations", "max_per_peer", "max_instance_mb"):
        if getattr(args, name) < 1:
            raise MamviewError(f"--{name.replace('_', '-')} must be at least 1")
    return dataclasses.replace(_default_limits(), max_associations=args.max_associations,
                               max_per_peer=args.max_per_peer,
                               max_instance_bytes=args.max_instance_mb << 20)


def _console_log(quiet: bool) -> logging.Handler | None:
    """Node log lines on stderr (they also go to the library's log file)."""
    if quiet:
        return None
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("mamview.net").addHandler(h)
    return h


def _node(text: str, lib: Library):
    from mamview.core import settings as settings_mod
    from mamview.core.net.nodes import resolve_node

    try:
        return resolve_node(text, settings_mod.load(lib.settings_file))
    except ValueError as exc:
        raise CliError(str(exc)) from exc


# ---------------------------------------------------------------- commands


LISTEN_NEEDS_A_CHOICE = (
    "listen needs to know whom to accept: give the modalities and PACS allowed to send with "
    "--allow-ae AE and/or --allow-host HOST (repeatable; an address, a network such as "
    "10.0.0.0/24 or a name), or --allow-any to accept any peer (not recommended)")


def cmd_listen(args, lib: Library) -> int:
    """Run the storage node until Ctrl-C or SIGTERM; refuses to start open by accident."""
    import signal
    import threading

    from mamview.core import settings as settings_mod
    from mamview.core.errors import MamviewError
    from mamview.core.net.scp import OPEN_WARNING, StorageNode

    if not (args.allow_ae or args.allow_host or args.allow_any):
        raise MamviewError(LISTEN_NEEDS_A_CHOICE)  # secure default: never open by accident
    st = settings_mod.load(lib.settings_file)
    try:
        lib.ensure()
        node = StorageNode(lib, ae_title=args.ae_title, port=args.port, host=args.host,
                           allowed_aes=args.allow_ae or None, allowed_hosts=args.allow_host or None,
                           allow_any=args.allow_any, limits=_listen_limits(args),
                           score=not args.no_score,
                           model=args.model or st.model, device=args.device or st.device)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"the library folder {lib.home} is not usable: {exc}") from exc
    if node.is_open:
        print(f"mamview: warning: {OPEN_WARNING} (--allow-any)", file=sys.stderr, flush=True)
    handler = _console_log(args.quiet)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            node.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
                               f"(another program may use the port; ports below 1024 need "
                               f"privileges)") from exc
        print(f"mamview DICOM node {node.ae_title} listening on {args.host}:{node.bound_port}; "
              f"library {lib.home}; log {lib.logs / 'dicom-node.log'}. Ctrl-C stops.",
              file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("Stopping: indexing what was received …", file=sys.stderr, flush=True)
        node.stop()
        s = node.stats
        print(f"Received {s.received} instances ({s.duplicates} already held, {s.failed} refused), "
              f"{s.exams_complete} exams complete, {s.exams_scored} scored.", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
        if handler is not None:
            logging.getLogger("mamview.net").removeHandler(handler)


def cmd_echo(args, lib: Library) -> int:
    """C-ECHO a node; CliError with the reason when it does not answer."""
    from mamview.core.net.nodes import echo

    node = _node(args.node, lib)
    try:
        result = echo(node, args.our_ae, timeout=args.timeout)
    except ValueError as exc:  # our AE title
        raise CliError(str(exc)) from exc
    if not result.ok:
        raise CliError(result.message)
    print(result.message)
    return 0


def cmd_fetch_priors(args, lib: Library) -> int:
    """C-FIND + C-MOVE a woman's earlier studies into the library; 1 when some failed, 130
    when Ctrl-C cancelled it (C-CANCEL sent; what arrived is kept and indexed)."""
    import threading

    from tqdm import tqdm

    from mamview.core.net.nodes import NetError
    from mamview.core.net.qr import fetch_priors
    from mamview.core.net.scp import StorageNode

    pacs = _node(args.pacs, lib)
    try:
        # the temporary node takes only what the PACS we asked sends
        node = StorageNode(lib, ae_title=args.our_ae, port=args.port, host=args.host,
                           score=args.score, allowed_aes=[pacs.ae_title],
                           allowed_hosts=[pacs.host])
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    open_db(lib).close()
    try:
        node.start()
        own = True
    except OSError:
        own = False  # a node (`mamview listen`, the GUI) already holds the port: it receives
        print(f"Port {args.port} is in use: assuming a mamview node listens there as "
              f"{args.our_ae}.", file=sys.stderr)
    bars = []  # made at the first progress report, when the number of studies is known

    def progress(done, total, study):
        if not bars:
            bars.append(tqdm(total=total, desc=f"Fetching priors of {args.patient}",
                             unit="study", file=sys.stderr, disable=args.json or not total))
        bars[0].update(done - bars[0].n)

    cancel, finished = threading.Event(), threading.Event()
    outcome: dict = {}

    def work():
        try:
            outcome["summary"] = fetch_priors(
                lib, args.patient, pacs, args.our_ae, move_destination=args.move_destination,
                progress=progress, modality=None if args.all_modalities else "MG",
                timeout=args.timeout, all_studies=args.all_studies, issuer=args.issuer,
                cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            outcome["error"] = exc
        finally:
            finished.set()

    # the request runs on a worker so that Ctrl-C reaches us here and becomes a C-CANCEL
    worker = threading.Thread(target=work, name="mamview-fetch-priors", daemon=True)
    interrupted = False
    try:
        worker.start()
        # an Event, not join(): a join interrupted by Ctrl-C can think the thread has ended
        while not finished.is_set():
            try:
                finished.wait(0.2)
            except KeyboardInterrupt:
                if interrupted:
                    raise  # a second Ctrl-C: stop waiting for the PACS
                interrupted = True
                cancel.set()
                print("\nCancelling: asking the PACS to stop (Ctrl-C again to quit now) …",
                      file=sys.stderr, flush=True)
        error = outcome.get("error")
        if isinstance(error, (NetError, ValueError)):
            raise CliError(str(error)) from error
        if error is not None:
            raise error
        summary = outcome["summary"]
        if own and not node.wait_idle(timeout=max(60.0, args.timeout * 4)):
            print("Indexing is still running; the files are in the inbox and will be indexed "
                  "at the next start.", file=sys.stderr)
    finally:
        for bar in bars:
            bar.close()
        if own:
            node.stop()
    if args.json:
        d = dict(vars(summary))
        d["ok"] = summary.ok
        print_json(d)
    else:
        lines = summary.lines()
        print(lines[0])
        for line in lines[1:]:
            print(f"  {line}")
        if own and summary.instances_moved:
            s = node.stats
            print(f"Stored {s.received} new images ({s.duplicates} already held, "
                  f"{s.failed} refused).")
    if interrupted or summary.cancelled:
        return EXIT_INTERRUPTED
    return 0 if summary.ok else 1
