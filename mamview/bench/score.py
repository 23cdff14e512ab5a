"""`mamview bench score`: exams/s of the scoring pipeline, and whether the official model may
decode JPEG 2000 at a reduced resolution.

Everything runs on a generated archive (`demo_data`, full-size images in its three transfer
syntaxes, one exam per woman) scored into scratch libraries, never the user's:

* **CPU end to end** (decode, preprocess, model, write) through `cli.scoring.score_exams`, the
  code behind `mamview score`, with 1 and 2 decode workers in one run, and their ratio. Each
  run gets a fresh library, so nothing is a cache hit. Where the run says how its time was
  spent (`ScoreRun.timings`, from `InferenceService.timings()`) those shares are reported;
  in any case a serial pass in this process times decoding and preprocessing per exam.
* **Model-only**: the same exams' preprocessed tensors, already in memory, through the model.
* **CUDA** (only where `torch.cuda.is_available()`): batch 1/8/32/64, fp32 vs bf16 autocast,
  and at batch 32 bf16 with torch.compile, CUDA graphs and both; host→device copy and
  compute timed apart; end to end through `score_exams(device="cuda")` with its bottleneck
  named. `run_config` runs one configuration and also runs on the CPU (tests use it so).
* **JPEG 2000 reduced decode for full Mirai**: a 4096×3328 lossless J2K exam decoded in full
  and at resolution level 1 (2048×1664 directly), both through Mirai's preprocessing; the
  difference of the preprocessed tensors and of the rounded Year 1..5 risks of a random-weight
  Mirai, and the decode time of each.

Full Mirai has no weights here: a random-weight model folder (seeded, with the released
calibrator's coefficients) is written into the bench's scratch home. Default sizes keep the
run to minutes on a 2-core CPU: 20 demo exams (64 with CUDA) and 3 Mirai exams (~20-30 s each
per pass on one thread). `--exams N` sets both.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mamview.bench.format import machine_line

#: Exams scored per model when --exams is not given (CPU; the demo archive is larger on CUDA).
DEFAULT_EXAMS = {"demo": 20, "mirai": 3}
DEFAULT_CUDA_DEMO_EXAMS = 64
CUDA_BATCHES = (1, 8, 32, 64)
CUDA_COMPILE_BATCH = 32  # the batch at which torch.compile / CUDA graphs are compared
# Effective coefficients of the released Mirai calibrator, calibrated = sigmoid(α + β·x)
# (shared/reference/mirai.md §5.2): random weights, but risks in the usual range.
RELEASED_ALPHA_BETA = ((-6.941708811474187, 5.202204577500695),
                       (-6.118981671362509, 4.7190617802843455),
                       (-5.4558979486125505, 4.276177460151401),
                       (-5.1194480916336005, 4.218360381892919),
                       (-4.776621706974412, 3.904384040341062))
# The reference's own decoders (pydicom vs dcmtk) differ by at most one grey level (spec §2.2):
# a reduced decode within that of the full one is as good as the reference's own variation.
GREY_LEVEL_TOLERANCE = 1.0
_DTYPES = ("fp32", "bf16", "fp16")


# ---------------------------------------------------------------- the whole bench


def measure(model: str = "both", exams: int | None = None, work: str | None = None,
            size: str = "full", cuda: bool | None = None) -> dict[str, Any]:
    """Every figure of the bench for `model` ('demo', 'mirai' or 'both') as a dict.

    `exams`: exams scored per model (None: DEFAULT_EXAMS). `work`: a folder that keeps the
    generated archive for later runs (otherwise a temporary one, removed). `size`: 'full'
    (real mammogram sizes, Mirai at 2048×1664) or 'small' (small images and a narrow Mirai at
    a quarter of its resolution; for tests). An archive kept in `work` is reused as it is, and
    the figures say its size. `cuda`: None runs the CUDA section where CUDA is available.
    """
    if model not in ("demo", "mirai", "both"):
        raise ValueError("model must be 'demo', 'mirai' or 'both'")
    if size not in ("full", "small"):
        raise ValueError("size must be 'full' or 'small'")
    if exams is not None and exams < 1:
        raise ValueError("exams must be at least 1")
    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="mamview-bench-score-"))
    try:
        return _measure(base, model, exams, size, cuda)
    finally:
        if not work:
            shutil.rmtree(base, ignore_errors=True)


def _measure(base: Path, model: str, exams: int | None, size: str,
             cuda: bool | None) -> dict[str, Any]:
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    names = ["demo", "mirai"] if model == "both" else [model]
    counts = {m: exams or (DEFAULT_CUDA_DEMO_EXAMS if cuda and m == "demo"
                           else DEFAULT_EXAMS[m]) for m in names}
    archive = make_archive(base, max(counts.values()), size)
    size = archive["size"]  # a kept archive's, which may differ from the one asked for
    home = base / "home"
    fig: dict[str, Any] = {"benchmark": "score", "machine": machine_line(),
                           "torch": torch.__version__, "archive": _public(archive),
                           "models": {}}
    mirai = None
    for name in names:
        entry = (demo_entry(home) if name == "demo"
                 else random_mirai_entry(home / "models" / f"mirai-random-{size}", size))
        folders = [base / f for f in archive["folders"][:counts[name]]]
        part: dict[str, Any] = {"exams": counts[name], "entry": entry.name}
        part["cpu"] = end_to_end(base / f"libs-{name}", entry, folders)
        serial = serial_pass(Path(part["cpu"]["library"]), entry)
        part["serial"] = serial["figures"]
        part["model_only"] = model_only(serial["model"], serial["tensors"],
                                        warm_up=name == "demo")
        part["cpu"]["shares"] = _cpu_shares(part)
        if cuda:
            part["cuda"] = cuda_section(base / f"libs-{name}-cuda", entry, folders,
                                        serial["model"], serial["tensors"], part["serial"])
        if name == "mirai":
            mirai = serial["model"]
        fig["models"][name] = part
    fig["j2k_reduced"] = j2k_reduced(base, size, mirai)
    return fig


# ---------------------------------------------------------------- inputs


def make_archive(base: Path, n_exams: int, size: str = "full", seed: int = 3) -> dict:
    """A generated archive of `n_exams` complete exams, one per woman, in demo_data's transfer
    syntaxes and vendors; generated in parallel processes, kept in `base/archive-N` and reused
    when its manifest is there. Returns the manifest (folders relative to `base`, in order)."""
    from mamview.core.demo_data import SYNTAXES, VENDORS, make_women

    folder = base / f"archive-{n_exams}"
    manifest = folder / "archive.json"
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        if doc.get("exams") == n_exams:
            return doc
    shutil.rmtree(folder, ignore_errors=True)
    women = [replace(w, exam_dates=w.exam_dates[-1:], missing_view="", spot_view="")
             for w in make_women(n_exams, seed)]
    workers = max(1, min(os.cpu_count() or 1, 8, len(women)))
    chunks = [women[i::workers] for i in range(workers)]
    t = time.perf_counter()
    if workers == 1:
        _generate_part(folder / "part-0", chunks[0], size, seed)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: never fork a process that may already hold torch threads
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(_generate_part, [folder / f"part-{k}" for k in range(workers)], chunks,
                        [size] * workers, [seed] * workers))
    part_of = {w.patient_id: k for k, chunk in enumerate(chunks) for w in chunk}
    doc = {
        "exams": n_exams, "size": size, "images": 4 * n_exams, "seed": seed,
        "generation_s": round(time.perf_counter() - t, 1),
        "syntaxes": _tally(SYNTAXES[w.syntax] for w in women),
        "transfer_syntax_names": _tally(w.syntax for w in women),
        "matrix": _tally("×".join(map(str, VENDORS[w.vendor][size])) for w in women),
        "folders": [f"{folder.name}/part-{part_of[w.patient_id]}/{w.patient_id}"
                    for w in women],
    }
    manifest.write_text(json.dumps(doc, indent=2))
    return doc


def _generate_part(out: Path, women: list, size: str, seed: int) -> None:
    from mamview.core.demo_data import generate_cohort

    generate_cohort(out, len(women), size, seed, women=women)


def _tally(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _public(archive: dict) -> dict:
    return {k: v for k, v in archive.items() if k not in ("folders", "syntaxes")}


def demo_entry(home: Path):
    """The bundled demo model's registry entry (ModelUnavailable when it is not bundled)."""
    from mamview.core.models import registry
    from mamview.core.paths import Library

    return registry.resolve(Library(home), "demo")


def mirai_config(size: str = "full"):
    """Full Mirai's configuration, or for 'small' a narrow Mirai at 320×256 (tests): half the
    rows and columns of demo_data's larger small images, as 2048×1664 is of its full ones."""
    from mamview.core.models.mirai import MiraiConfig

    if size == "full":
        return MiraiConfig()
    return MiraiConfig(trunk_widths=(8, 16, 16, 16), input_height=320, input_width=256,
                       transformer_hidden_dim=16, num_heads=2)


def random_mirai(config, seed: int = 0):
    """A random-weight (seeded) Mirai with the released calibrator's coefficients →
    (MiraiNet, MiraiCalibrator, ModelIdentity). For timing and for comparing two inputs."""
    import torch

    from mamview.core.models.identity import ModelIdentity
    from mamview.core.models.mirai import MiraiCalibrator, MiraiNet, state_dict_sha256
    from mamview.core.models.preprocess import PREPROCESSING_VERSION

    torch.manual_seed(seed)
    net = MiraiNet(config).eval()
    cal = MiraiCalibrator.from_alpha_beta(RELEASED_ALPHA_BETA, "released-coefficients")
    ident = ModelIdentity("mirai", "Mirai architecture, random weights (bench)",
                          f"bench-random-{seed}", state_dict_sha256(net.state_dict()),
                          cal.calibrator_id, cal.sha256, PREPROCESSING_VERSION, False,
                          "random weights: for timing only")
    return net, cal, ident


def random_mirai_entry(folder: Path, size: str = "full"):
    """A registry entry for a random-weight Mirai written (once) into `folder` — a scratch
    home's models folder, never resources/."""
    from mamview.core.models.registry import ModelEntry

    if not (folder / "weights.pt").is_file():
        from mamview.core.models.converted import write_converted

        net, cal, ident = random_mirai(mirai_config(size))
        write_converted(folder, net, cal, ident, {"note": "random weights for mamview bench "
                                                          "score; not a model"})
    return ModelEntry("mirai", "Mirai architecture, random weights (bench)", folder, True,
                      label="random weights: for timing only")


# ---------------------------------------------------------------- CPU


def end_to_end(libs: Path, entry, folders: list[Path], workers: tuple = (0, 1, 2),
               device: str = "cpu", batch_size: int = 4) -> dict[str, Any]:
    """`score_exams` over `folders` with each decode-worker count in `workers`, each into a
    fresh library under `libs` (so every exam is computed): exams/s, counts, and the ratio of
    the last count's rate to the first's. Model loading is inside each run's time, as in
    `mamview score`."""
    from mamview.cli.scoring import score_exams
    from mamview.core.ingest import drain, run_import
    from mamview.core.paths import Library

    runs, risks = [], []
    for n in workers:
        lib = Library(libs / f"workers-{n}")
        shutil.rmtree(lib.home, ignore_errors=True)
        drain(run_import(lib, folders, make_previews=False))
        run = score_exams(lib, entry, None, device=device, batch_size=batch_size,
                          decode_workers=n)
        timings = getattr(run, "timings", None)
        runs.append({
            "decode_workers": n, "exams": run.exams, "computed": run.computed,
            "cached": run.cached, "unscorable": dict(run.unscorable),
            "failed": [f"{ev.exam_key}: {ev.message}" for ev in run.failed],
            "device": run.device_label, "seconds": round(run.seconds, 3),
            "exams_per_s": _rate(run.computed, run.seconds),
            # after the first computed score: what an archive of thousands of exams sees once
            # the model is loaded and the decode processes have started
            "first_result_s": (round(run.first_result_s, 3)
                               if run.first_result_s is not None else None),
            # (only with more exams than one batch: a batch's scores arrive together)
            "steady_exams_per_s": (_rate(run.computed - 1, run.seconds - run.first_result_s)
                                   if run.first_result_s is not None
                                   and run.computed > batch_size else None),
            "timings": dict(timings) if timings else None,
        })
        risks.append(_stored_risks(lib, entry))
    # the issue's ratio: 2 vs 1 decode workers (else the last count against the first)
    by = {r["decode_workers"]: r for r in runs}
    a, b = (by[1], by[2]) if 1 in by and 2 in by else (runs[0], runs[-1])
    first, last = a["exams_per_s"], b["exams_per_s"]
    sa, sb = a.get("steady_exams_per_s"), b.get("steady_exams_per_s")
    return {"runs": runs, "library": str(libs / f"workers-{workers[0]}"),
            "ratio": round(last / first, 3) if first and last else None,
            "steady_ratio": round(sb / sa, 3) if sa and sb else None,
            # the acceptance: every path stores the same Year 1..5 risks (4 decimals)
            "identical_risks": all(r == risks[0] for r in risks) and bool(risks[0]),
            "ratio_of": f"{b['decode_workers']} vs {a['decode_workers']} decode workers"}


def _stored_risks(lib, entry) -> dict[str, tuple]:
    """exam key → the stored, rounded Year 1..5 risks of `entry` in `lib`."""
    from mamview.core.cache import reads
    from mamview.core.cache.db import connect

    db = connect(lib.database)
    try:
        keys = [e["exam_key"] for e in reads.list_exams(db, None)]
        rows = reads.scores_for_exams(db, keys, reads.model_ref(entry))
    finally:
        db.close()
    return {ek: tuple(r["risk"]) for ek, r in rows.items() if r.get("status") == "ok"}


def serial_pass(library: Path, entry) -> dict[str, Any]:
    """Decode (through the guarded boundary, as the service does) and preprocess every
    complete exam of the library folder `library` in this process, one at a time, with the
    service's CPU threads: seconds per exam of each. Returns the figures, the loaded model and the
    preprocessed tensors (for the model-only and CUDA passes)."""
    import torch

    from mamview.core.cache import reads
    from mamview.core.cache.db import connect
    from mamview.core.models import registry
    from mamview.core.paths import Library
    from mamview.core.services import default_cpu_threads
    from mamview.core.services.inference import Unscorable, exam_inputs, load_view

    torch.set_num_threads(default_cpu_threads())
    t = time.perf_counter()
    model = registry.load(entry, torch.device("cpu"))
    load_s = time.perf_counter() - t
    min_height = getattr(model, "decode_min_height", None)
    db = connect(Library(library).database, migrate=False)
    try:
        keys = [e["exam_key"] for e in reads.list_exams(db)]
        inputs = []
        for ek in keys:
            try:
                inputs.append(exam_inputs(db, ek))
            except Unscorable:
                continue
    finally:
        db.close()
    decode_s = pre_s = 0.0
    tensors = []
    for rows in inputs:
        t = time.perf_counter()
        views = [load_view(r, min_height) for r in rows]
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        tensors.append(model.preprocess(views))
        pre_s += time.perf_counter() - t
    n = max(1, len(tensors))
    return {"model": model, "tensors": tensors, "figures": {
        "exams": len(tensors), "threads": torch.get_num_threads(),
        "model_load_s": round(load_s, 3),
        "reduced_decode_min_height": min_height,
        "decode_s_per_exam": round(decode_s / n, 4),
        "preprocess_s_per_exam": round(pre_s / n, 4)}}


def model_only(model, tensors: list, batch_size: int = 4, warm_up: bool = True
               ) -> dict[str, Any]:
    """Exams/s of `model.predict` on preprocessed exams already in memory, in batches of
    `batch_size` as the service makes them (after one warm-up exam when `warm_up`)."""
    from mamview.core.models.base import ExamTensors

    if not tensors:
        return {"exams": 0, "exams_per_s": None}
    if warm_up:
        model.predict(tensors[0])
    t = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        model.predict(ExamTensors.collate(tensors[i:i + batch_size]))
    s = time.perf_counter() - t
    return {"exams": len(tensors), "batch_size": batch_size, "seconds": round(s, 3),
            "s_per_exam": round(s / len(tensors), 4), "exams_per_s": _rate(len(tensors), s)}


def _cpu_shares(part: dict) -> dict[str, Any]:
    """Where an exam's time goes on the CPU: the service's own timings when the run has them,
    else decode / preprocess / model from the serial and model-only passes (the rest of an
    end-to-end exam — writing, queueing, start-up — is what those leave)."""
    run = part["cpu"]["runs"][0]
    if run.get("timings"):
        # seconds per stage ('exams' is a count); decoding in worker processes adds up
        # across them, so these are shares of work, not of wall time
        t = {k: float(v) for k, v in run["timings"].items()
             if k != "exams" and isinstance(v, (int, float))}
        total = sum(t.values())
        return {"source": "the service's timings() (1 decode worker)",
                "seconds": {k: round(v, 3) for k, v in t.items()},
                "shares": {k: round(v / total, 3) for k, v in t.items()} if total else {}}
    s, m = part["serial"], part["model_only"]
    stages = {"decode": s["decode_s_per_exam"], "preprocess": s["preprocess_s_per_exam"],
              "model": m.get("s_per_exam") or 0.0}
    e2e = run["seconds"] / run["computed"] if run["computed"] else None
    if e2e:
        stages["write, queueing, start-up"] = max(0.0, e2e - sum(stages.values()))
    total = sum(stages.values())
    return {"source": "serial decode and model-only passes vs the 1-worker run",
            "s_per_exam": {k: round(v, 4) for k, v in stages.items()},
            "shares": {k: round(v / total, 3) for k, v in stages.items()} if total else {}}


# ---------------------------------------------------------------- one device configuration


def run_config(net, sample, device: str = "cpu", batch: int = 1, dtype: str = "fp32",
               compile: bool = False, graphs: bool = False, repeats: int = 3
               ) -> dict[str, Any]:
    """Time one configuration of a Mirai-architecture `net` on `device`: a batch of `batch`
    exams cycled from `sample` (ExamTensors on the CPU), host→device copy and forward timed
    apart (medians of `repeats` after warm-up).

    Pinned memory and non-blocking copies only on CUDA; autocast (`dtype` bf16/fp16) and CUDA
    graphs (`graphs`; with `compile`, torch.compile's mode="reduce-overhead") only on CUDA.
    A CUDA out-of-memory is reported in the result ('error'), not raised.
    """
    import torch

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if not cuda and (dtype != "fp32" or graphs):
        raise ValueError("autocast and CUDA graphs run on CUDA only; the CPU scores in fp32")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    out: dict[str, Any] = {"device": str(dev), "batch": batch, "dtype": dtype,
                           "compile": compile, "graphs": graphs, "repeats": repeats}
    idx = [i % sample.batch_size for i in range(batch)]
    host = [sample.images[idx], sample.view_seq[idx], sample.side_seq[idx],
            sample.time_seq[idx]]
    if cuda:
        host = [h.pin_memory() for h in host]
    net = net.to(dev).eval()
    fwd = net
    if compile:
        fwd = torch.compile(net, mode="reduce-overhead" if graphs else None)

    def copy():
        return [h.to(dev, non_blocking=cuda) for h in host]

    def forward(inputs):
        with torch.inference_mode(), torch.autocast(dev.type, dtype=amp,
                                                    enabled=amp is not None):
            return fwd(*inputs)

    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        dev_inputs = copy()
        run = (lambda: forward(dev_inputs))
        if graphs and not compile:
            run = _capture_graph(forward, dev_inputs, dev)
        for _ in range(3 if compile or graphs else 1):  # reduce-overhead records on run 2-3
            run()
        _sync(dev)
        out["warm_up_s"] = round(time.perf_counter() - t, 3)
        copy_s, compute_s = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            copied = copy()
            _sync(dev)
            copy_s.append(time.perf_counter() - t)
            del copied
            t = time.perf_counter()
            logits = run()
            _sync(dev)
            compute_s.append(time.perf_counter() - t)
        if not torch.isfinite(logits.float()).all():
            out["error"] = "non-finite logits"
    except torch.cuda.OutOfMemoryError:
        out["error"] = "out of memory"
        return out
    finally:
        if cuda:
            out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20)
    c, k = statistics.median(copy_s), statistics.median(compute_s)
    nbytes = sum(h.element_size() * h.nelement() for h in host)
    out.update({"copy_s_per_exam": c / batch, "compute_s_per_exam": k / batch,
                "copy_gb_per_s": round(nbytes / c / 1e9, 2) if c else None,
                "model_only_exams_per_s": _rate(batch, k)})
    return out


def _capture_graph(forward, dev_inputs, dev):
    """The forward recorded as one CUDA graph on static inputs (warmed up on a side stream,
    as torch.cuda.graphs requires); replaying it returns the static output."""
    import torch

    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward(dev_inputs)
    torch.cuda.current_stream(dev).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(dev_inputs)

    def replay():
        graph.replay()
        return static_out
    return replay


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------- CUDA


def cuda_configs(batches=CUDA_BATCHES, compile_batch: int = CUDA_COMPILE_BATCH
                 ) -> list[dict[str, Any]]:
    """The CUDA configurations timed: every batch in fp32 and bf16 eager, and at
    `compile_batch` bf16 with CUDA graphs, torch.compile, and torch.compile with CUDA graphs
    (compiling every batch and dtype would take longer than the rest of the bench)."""
    out = [{"batch": b, "dtype": d, "compile": False, "graphs": False}
           for d in ("fp32", "bf16") for b in batches]
    out += [{"batch": compile_batch, "dtype": "bf16", "compile": c, "graphs": g}
            for c, g in ((False, True), (True, False), (True, True))]
    return out


def cuda_section(libs: Path, entry, folders: list[Path], model, tensors: list,
                 serial: dict, configs: list[dict] | None = None, device: str = "cuda",
                 batch_size: int = CUDA_COMPILE_BATCH) -> dict[str, Any]:
    """Every configuration of `configs` (default `cuda_configs()`) on `device`, with the
    shares of time per exam spent decoding (+ preprocessing, one CPU core), copying and
    computing; then end to end through `score_exams(device=device)` in batches of
    `batch_size` (fp32, the service's default; decode workers sized to the machine) with its
    bottleneck named. `device='cpu'` with fp32 configurations runs the same code (tests)."""
    import torch

    from mamview.core.models.base import ExamTensors
    from mamview.core.models.device import describe_device

    dev = torch.device(device)
    sample = ExamTensors.collate(tensors[:8])
    decode_s = serial["decode_s_per_exam"] + serial["preprocess_s_per_exam"]
    runs = []
    for cfg in configs or cuda_configs():
        r = run_config(model.net, sample, device, **cfg)
        if "error" not in r:
            stages = {"decode": decode_s, "copy": r["copy_s_per_exam"],
                      "compute": r["compute_s_per_exam"]}
            total = sum(stages.values())
            r["shares"] = {k: round(v / total, 3) for k, v in stages.items()}
        runs.append(r)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    model.net.to("cpu")
    e2e = end_to_end(libs, entry, folders, workers=(None,), device=device,
                         batch_size=batch_size)["runs"][0]
    eager = sorted((r for r in runs if r["dtype"] == "fp32" and not r["compile"]
                    and not r["graphs"] and "error" not in r),
                   key=lambda r: (r["batch"] != batch_size, -r["batch"]))
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))  # what the service sizes to
    rates = {f"decode + preprocess ({workers} CPU workers)": _rate(workers, decode_s)}
    if eager:
        rates["host→device copy"] = _rate(1, eager[0]["copy_s_per_exam"])
        rates[f"compute (fp32, batch {eager[0]['batch']})"] = _rate(
            1, eager[0]["compute_s_per_exam"])
    known = {k: v for k, v in rates.items() if v}
    bottleneck = min(known, key=known.get) if known else None
    if e2e.get("timings"):  # the service's own account of its thread's time says it better
        t = e2e["timings"]
        busy = {k: float(t.get(k, 0.0)) for k in ("wait", "model", "write", "collate")}
        if sum(busy.values()):
            top = max(busy, key=busy.get)
            bottleneck = {"wait": "decoding: the model thread waited for decoded exams",
                          "model": "the model (host→device copy and compute)",
                          "write": "writing the scores", "collate": "collating batches"}[top]
            bottleneck += f" ({busy[top] / sum(busy.values()):.0%} of the scoring thread's time)"
    return {"device": describe_device(dev), "configs": runs,
            "end_to_end": {**e2e, "batch_size": batch_size,
                           "stage_exams_per_s": rates, "bottleneck": bottleneck}}


# ---------------------------------------------------------------- JPEG 2000 reduced decode


def j2k_reduced(base: Path, size: str = "full", model=None) -> dict[str, Any]:
    """Full decode vs resolution level 1 for Mirai, on a generated lossless J2K exam of
    demo_data's 4096×3328 vendor ('small': its 640×512 images into a narrow Mirai).

    (a) full decode + Mirai's preprocessing to half the rows and columns (2048×1664) against
    (b) `decode_reduced` straight to that size + the same preprocessing: max/mean absolute
    difference of the preprocessed tensor (normalised units and 16-bit grey levels), whether
    align-to-left mirrored the same views, the load time of each, and — with `model` (a
    Mirai RiskModel for that input size, e.g. random weights) — the Year 1..5 risks of both
    after round_risks and whether they are identical to the 4th decimal. Without `model` one
    view is compared (no risks).
    """
    import numpy as np
    import torch

    from mamview.core.models.base import round_risks
    from mamview.core.models.preprocess import preprocess_view
    from mamview.core.services.inference import load_view

    cfg = model.config if model is not None else mirai_config(size)
    labels = ["RCC", "LCC", "RMLO", "LMLO"] if model is not None else ["RCC"]
    rows = _j2k_exam(base / f"j2k-{size}", size, labels)
    height, width = rows[0]["rows"] // 2, rows[0]["cols"] // 2
    if (height, width) != (cfg.input_height, cfg.input_width):
        raise ValueError(f"the J2K exam is {rows[0]['rows']}×{rows[0]['cols']}, the model "
                         f"reads {cfg.input_height}×{cfg.input_width}: not one level apart")
    full_s, red_s, full_pre_s, red_pre_s = [], [], [], []
    full_views, red_views = [], []
    for r in rows:
        t = time.perf_counter()
        full_views.append(load_view(r, None))
        full_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        red_views.append(load_view(r, height))
        red_s.append(time.perf_counter() - t)
    shapes = sorted({tuple(v.array.shape) for v in red_views})
    if shapes != [(height, width)]:
        raise ValueError(f"the reduced decode gave {shapes}, not {height}×{width}")
    prepared = []
    for views, times in ((full_views, full_pre_s), (red_views, red_pre_s)):
        imgs, flips = [], []
        for v in views:
            t = time.perf_counter()
            x, flipped = preprocess_view(v, height, width, cfg.img_mean, cfg.img_std,
                                         cfg.num_chan)
            times.append(time.perf_counter() - t)
            imgs.append(x)
            flips.append(flipped)
        prepared.append((torch.stack(imgs), flips))
    (a, flips_a), (b, flips_b) = prepared
    diff = (a - b).abs()
    out: dict[str, Any] = {
        "image": f"{rows[0]['rows']}×{rows[0]['cols']} lossless JPEG 2000, "
                 f"{rows[0]['bits']}-bit {rows[0]['voi']} VOI",
        "target": f"{height}×{width}", "views": len(rows),
        "load_full_s_per_image": round(statistics.mean(full_s), 4),
        "load_reduced_s_per_image": round(statistics.mean(red_s), 4),
        "load_speedup": _ratio(statistics.mean(full_s), statistics.mean(red_s)),
        "preprocess_full_s_per_image": round(statistics.mean(full_pre_s), 4),
        "preprocess_reduced_s_per_image": round(statistics.mean(red_pre_s), 4),
        "tensor_max_abs_diff": float(diff.max()), "tensor_mean_abs_diff": float(diff.mean()),
        "grey_max_abs_diff": round(float(diff.max()) * cfg.img_std, 2),
        "grey_mean_abs_diff": round(float(diff.mean()) * cfg.img_std, 3),
        "pixels_differing_share": round(float((diff > 0).float().mean()), 4),
        "same_mirroring": flips_a == flips_b,
        "risks": None,
    }
    if model is not None:
        full_risk = round_risks(model.predict(model.preprocess(full_views)))[0]
        red_risk = round_risks(model.predict(model.preprocess(red_views)))[0]
        out["risks"] = {"model": model.identity.name,
                        "full": [float(x) for x in full_risk],
                        "reduced": [float(x) for x in red_risk],
                        "max_abs_diff": round(float(np.max(np.abs(full_risk - red_risk))), 6),
                        "identical_4dp": bool(np.array_equal(full_risk, red_risk))}
    out["verdict"] = _j2k_verdict(out)
    return out


def _j2k_exam(folder: Path, size: str, labels: list[str]) -> list[dict]:
    """One woman's views from demo_data's 4096×3328 vendor (GEN), lossless J2K, written once
    into `folder`: rows as `load_view` reads them."""
    from datetime import date

    import numpy as np
    from pydicom.uid import generate_uid

    from mamview.core.demo_data import VENDORS, Woman, draw_breast, write_image

    v = VENDORS["GEN"]
    w = Woman(0, "J2KBENCH", "BENCH^J2K", date(1962, 4, 1), False, 0.55, 2.0,
              (date(2025, 3, 1),), None, "GEN", "jpeg2000", (False, False))
    out = []
    for k, label in enumerate(labels):
        path = folder / f"{label}.dcm"
        lat, view = label[0], label[1:]
        if not path.is_file():
            rng = np.random.default_rng([11, k])
            px = draw_breast(v[size], view, w.density, 3.0, rng)
            write_image(path, w, w.exam_dates[0], generate_uid(entropy_srcs=["j2k-bench"]),
                        lat, view, px, seed=11)
        out.append({"path": str(path), "label": label, "laterality": lat, "view": view,
                    "rows": v[size][0], "cols": v[size][1], "bits": v["bits"],
                    "voi": v["voi"]})
    return out


def _j2k_verdict(fig: dict) -> str:
    """Whether the figures allow the reduced decode for Mirai: risks identical to the 4th
    decimal AND tensors within the reference's own decoder tolerance (random weights are too
    weak a witness on their own)."""
    within = fig["grey_max_abs_diff"] <= GREY_LEVEL_TOLERANCE and fig["same_mirroring"]
    risks = fig["risks"]
    if risks is not None and not risks["identical_4dp"]:
        return "keep the full decode: Year 1..5 risks differ in the 4th decimal"
    if not within:
        return (f"keep the full decode: the preprocessed tensors differ by up to "
                f"{fig['grey_max_abs_diff']:g} grey levels, more than the reference's own "
                f"{GREY_LEVEL_TOLERANCE:g}" + ("" if fig["same_mirroring"] else
                                               ", and align-to-left mirrors differently"))
    if risks is None:
        return "tensors agree within tolerance; risks not compared (no Mirai in this run)"
    return "reduced decode acceptable: tensors within tolerance and risks identical"


# ---------------------------------------------------------------- report


def _rate(n: float, seconds: float) -> float | None:
    return round(n / seconds, 3) if n and seconds else None


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures of :func:`measure` as (label, value) rows (the machine row aside)."""
    a = fig["archive"]
    out = [("archive", f"{a['exams']} exams ({a['size']}; {_kv(a['matrix'])}; "
                       f"{_kv(a['transfer_syntax_names'])}), generated in "
                       f"{a['generation_s']} s")]
    for name, part in fig["models"].items():
        cpu = part["cpu"]
        for r in cpu["runs"]:
            who = (f"{r['decode_workers']} decode worker(s)" if r["decode_workers"]
                   else "decoding in the scoring thread (the old path)")
            out.append((f"{name}: CPU end to end, {who}",
                        f"{_num(r['exams_per_s'])} exams/s ({r['computed']} computed in "
                        f"{r['seconds']} s, model load included; {r['device']}); "
                        f"{_num(r.get('steady_exams_per_s'))} exams/s after the first score "
                        f"at {r.get('first_result_s')} s" + _problems(r)))
        out.append((f"{name}: ratio {cpu['ratio_of']}",
                    f"{_num(cpu['ratio'])} end to end, {_num(cpu.get('steady_ratio'))} after "
                    "the first score; identical risks on every path: "
                    f"{cpu.get('identical_risks')}"))
        s = part["serial"]
        out.append((f"{name}: serial decode / preprocess",
                    f"{s['decode_s_per_exam']} / {s['preprocess_s_per_exam']} s per exam "
                    f"({s['threads']} thread(s); reduced decode to "
                    f"{s['reduced_decode_min_height'] or 'none: full'})"))
        m = part["model_only"]
        out.append((f"{name}: CPU model-only",
                    f"{_num(m['exams_per_s'])} exams/s (batch {m.get('batch_size')}, "
                    f"{m['exams']} exams)"))
        sh = cpu["shares"]
        out.append((f"{name}: CPU time shares", ", ".join(
            f"{k} {v:.0%}" for k, v in sh["shares"].items()) + f" ({sh['source']})"))
        cuda = part.get("cuda")
        if cuda:
            for r in cuda["configs"]:
                label = (f"{name}: {cuda['device']} batch {r['batch']} {r['dtype']}"
                         + (" compile" if r["compile"] else "")
                         + (" graphs" if r["graphs"] else ""))
                if "error" in r:
                    out.append((label, r["error"]))
                    continue
                out.append((label, f"{_num(r['model_only_exams_per_s'])} exams/s model-only; "
                                   f"copy {r['copy_s_per_exam'] * 1e3:.2f} ms, compute "
                                   f"{r['compute_s_per_exam'] * 1e3:.2f} ms per exam; shares "
                                   + ", ".join(f"{k} {v:.0%}" for k, v in r["shares"].items())))
            e = cuda["end_to_end"]
            out.append((f"{name}: {cuda['device']} end to end", f"{_num(e['exams_per_s'])} exams/s "
                        f"(batch {e['batch_size']}, fp32); bottleneck: {e['bottleneck']}"))
    j = fig["j2k_reduced"]
    out.append(("J2K reduced decode for Mirai", f"{j['image']} → {j['target']}, "
                f"{j['views']} view(s)"))
    out.append(("J2K load full / reduced", f"{j['load_full_s_per_image']} / "
                f"{j['load_reduced_s_per_image']} s per image ({_num(j['load_speedup'])}×)"))
    out.append(("J2K preprocessed tensor |diff|",
                f"max {j['tensor_max_abs_diff']:.4g} (≈{j['grey_max_abs_diff']:g} grey "
                f"levels), mean {j['tensor_mean_abs_diff']:.3g} "
                f"(≈{j['grey_mean_abs_diff']:g}); {j['pixels_differing_share']:.1%} of "
                f"pixels differ; same mirroring: {j['same_mirroring']}"))
    if j["risks"]:
        r = j["risks"]
        out.append(("J2K Year 1..5 risks full / reduced",
                    f"{r['full']} / {r['reduced']} (max diff {r['max_abs_diff']:g}; "
                    f"identical to 4 dp: {r['identical_4dp']}; {r['model']})"))
    out.append(("J2K verdict", j["verdict"]))
    return out


def _kv(d: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in d.items())


def _num(x) -> str:
    return "n/a" if x is None else f"{x:g}"


def _problems(r: dict) -> str:
    bad = sum(r["unscorable"].values()) + len(r["failed"])
    return f"; {bad} not scored" if bad else ""
