"""One scoring run on the console, shared by `mamview score` and the console `mamview demo`:
an in-process `InferenceService`, a tqdm bar on stderr, the summary lines afterwards.

Scores are saved per batch, so a killed run loses at most the batch in progress; a rerun finds
the finished exams in the cache (same model and input files) and skips them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from mamview.cli.common import CliError, open_db, term
from mamview.core.domain import ScoreState
from mamview.core.paths import Library


@dataclass
class ScoreRun:
    """What one run did: counts by outcome, the device it ran on, how long it took."""

    exams: int = 0
    computed: int = 0
    cached: int = 0
    outside: int = 0  # scored although outside the validated domain (on request)
    stale: int = 0  # stored scores whose key no longer matched: computed again
    unscorable: dict[str, int] = field(default_factory=dict)  # reason → exams
    failed: list = field(default_factory=list)  # ScoreFailed events
    device_label: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    timings: dict | None = None  # seconds per pipeline stage, where the service counts them
    first_result_s: float | None = None  # when the first computed score came (start-up ends)


def score_exams(lib: Library, entry, patient_keys: list[str] | None = None, *,
                device: str = "auto", batch_size: int = 4,
                include_out_of_domain: bool = False, decode_workers: int | None = None,
                cluster: str | None = None) -> ScoreRun:
    """Score every exam of `patient_keys` (None: the whole library) with the registry `entry`,
    showing a progress bar on stderr. Ctrl-C ends the run early (`interrupted`); what was
    finished stays in the cache. `CliError` when the service cannot score at all.

    `decode_workers`: decode processes of the pipelined scorer (None: sized to the machine).
    `cluster`: a Dask scheduler address ('local': a cluster on this machine); the workers score,
    this process writes the cache; the same events as the in-process service."""
    from tqdm import tqdm

    from mamview.core.cache import reads
    from mamview.core.models import registry
    from mamview.core.services.inference import (ExamScored, ExamUnscorable, GenerationDone,
                                                 InferenceService, ScoreFailed, ServiceError)

    db = open_db(lib)
    try:
        exams = [e["exam_key"] for e in reads.list_exams(db, patient_keys)]
        run = ScoreRun(exams=len(exams))
        run.stale = sum(s.state == ScoreState.STALE for s in
                        reads.current_scores(db, exams, reads.model_ref(entry),
                                             include_out_of_domain=include_out_of_domain
                                             ).values())
    finally:
        db.close()
    if not exams:
        return run
    # the service's default CPU threads (one core left free): on a busy 2-core machine two
    # threads scored the demo cohort 2-3× slower than one
    if cluster:
        from mamview.core.services.cluster import ClusterError, ClusterService

        try:
            svc = ClusterService(lib, entry, cluster, device=device, batch_size=batch_size,
                                 include_out_of_domain=include_out_of_domain)
        except ClusterError as exc:
            raise CliError(str(exc)) from exc
    else:
        svc = InferenceService(lib.database, lambda dev: registry.load(entry, dev),
                               device=device, batch_size=batch_size,
                               include_out_of_domain=include_out_of_domain,
                               decode_workers=decode_workers)
    t0 = time.perf_counter()
    gen = svc.submit(exams)
    try:
        with tqdm(total=len(exams), desc=f"Scoring ({entry.model_id})", unit="exam",
                  file=sys.stderr) as bar:
            while True:
                ev = svc.next_event()  # never waits on a worker that died
                if isinstance(ev, ServiceError):
                    raise CliError(ev.message)
                if isinstance(ev, ExamScored):
                    run.cached += ev.cached
                    run.computed += not ev.cached
                    if not ev.cached and run.first_result_s is None:
                        run.first_result_s = time.perf_counter() - t0
                    run.outside += bool(ev.domain)
                    bar.update(1)
                elif isinstance(ev, ExamUnscorable):
                    run.unscorable[ev.reason] = run.unscorable.get(ev.reason, 0) + 1
                    bar.update(1)
                elif isinstance(ev, ScoreFailed):
                    run.failed.append(ev)
                    bar.update(1)
                elif isinstance(ev, GenerationDone) and ev.generation == gen:
                    break
    except KeyboardInterrupt:
        print("\nInterrupted; finished exams are kept and will not be computed again.",
              file=sys.stderr)
        run.interrupted = True
    finally:
        svc.shutdown()
        run.device_label = svc.device_label
        run.timings = svc.timings() if hasattr(svc, "timings") else None
        run.seconds = time.perf_counter() - t0
    return run


def print_score_run(run: ScoreRun, entry, include_out_of_domain: bool) -> None:
    """The summary of a finished run: model, device, counts, throughput, what was not scored."""
    print(term(f"Model: {entry.name}" + (f" — {entry.label}" if entry.label else "")))
    print(f"Device: {term(run.device_label)}")
    print(f"Scored {run.computed + run.cached} exams ({run.computed} computed, {run.cached} "
          "already in the cache).")
    if run.stale:
        print(f"Recomputed {run.stale} exam(s) whose stored score was stale (model or image "
              "changed).")
    if run.outside:
        print(f"{run.outside} of them from images outside the model's validated domain, on "
              "request (labelled so wherever they are shown).")
    if run.computed:
        print(f"Throughput: {run.computed / run.seconds:.2f} exams/s computed ({run.seconds:.1f} s "
              "in all, model loading included)")
    for reason, n in sorted(run.unscorable.items()):
        print(term(f"Not scored, {reason}: {n}"))
    if not include_out_of_domain and any(
            r.startswith("outside the model's validated domain") for r in run.unscorable):
        print("Use --include-out-of-domain to score those outside the validated domain anyway.")
    for ev in run.failed:
        print(term(f"Failed: {ev.exam_key}: {ev.message}"))
