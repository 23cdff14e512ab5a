"""Train the bundled demo model: a reduced Mirai-architecture network on synthetic mammograms.

    python -m tools.train_demo --out resources/demo_model [--patients N]
        [--seed S] [--epochs E] [--rank-weight W] [--exam-cache FILE]

Reproducible on a CPU in a few minutes. The script

1. writes a synthetic cohort (`demo_data.generate_cohort`, size "small") into a temporary folder
   and imports it into a temporary library, exactly as a user's files would be;
2. loads every complete exam through the path inference uses (`exam_inputs` + `load_view` with
   the demo model's reduced decode, then `preprocess_exam` at the demo input size), so training
   and scoring see the same pixels;
3. splits the women (never exams) into train / validation / held-out test;
4. trains `MiraiNet` at reduced width and resolution to predict the ground-truth cumulative risk
   of years 1..5 (r_k = 1 − (1 − r5)^(k/5)) with a squared-error loss on the logit scale;
5. fits the per-year Platt calibrator on the validation women and reports agreement with the
   ground truth on the held-out women (Spearman ρ and mean absolute error of the 5-year risk);
6. writes weights.pt / config.json / calibrator.json with `converted.write_converted`.

The result is a demonstration of the plumbing, not a risk model: the synthetic images carry
their risk as drawn-in specks whose number and contrast grow with log(risk)
(`demo_data.risk_features`), which real mammograms do not.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
import torch.nn.functional as F

from mamview.core.models.base import YEARS
from mamview.core.models.identity import ModelIdentity
from mamview.core.models.mirai import MiraiCalibrator, MiraiConfig, MiraiNet, demo_preprocessing_version, \
    state_dict_sha256
from mamview.core.models.preprocess import preprocess_exam

DEMO_LABEL = "demo model — synthetic training data — not for clinical use"

#: The demo network: ResNet-18 layout at a quarter of the width, 1/8 of Mirai's resolution.
#: This is the bundled model's configuration (`--epochs 14`, rank weight 0 reproduce it).
#: History on seed 0 (held-out ρ / MAE pp, val ρ in brackets):
#:   old generator, bundled 256×208, 4 stages, 14 ep, MSE   0.654 / 0.37  (0.51)
#:   old generator, 128×104 5 stages / 28 ep / + ranking    0.61-0.65 / 0.39-0.44
#:   generator with a lead marker and continuous speck contrast, same net, 14 ep
#:                                                          0.969 / 0.11  (0.96)
#: With the old generator every variant fitted even its training women only to ρ ≈ 0.73: the
#: controls (most exams) differed by a speck or two of ~1 px, and Mirai's per-image min-max
#: window rescaled speck contrast by whatever tissue was brightest (maxima 0.55-0.94). The
#: generator now pins each image's maximum with a lead marker and makes speck contrast grow
#: continuously with log(risk) (`demo_data.risk_features`), which a max-pooled trunk can read.
DEMO_CONFIG = dict(input_height=256, input_width=208, trunk_widths=(16, 32, 64, 128),
                   trunk_blocks=(2, 2, 2, 2), transformer_hidden_dim=128, num_heads=4)

#: Fractions of women for validation (calibrator) and held-out test; the rest train.
VAL_FRACTION = 0.15
TEST_FRACTION = 0.2


@dataclass
class ExamData:
    """One complete exam, preprocessed once: the network input and its ground truth."""

    patient_id: str
    exam_key: str
    image: torch.Tensor  # float32 [4, 1, H, W] (the three channels are identical)
    view_seq: torch.Tensor  # int64 [4]
    side_seq: torch.Tensor  # int64 [4]
    risk5: float  # ground-truth 5-year risk, fraction


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def yearly_targets(risk5: np.ndarray | torch.Tensor, years: int = YEARS):
    """Cumulative risk for years 1..`years` from the 5-year risk at a constant hazard."""
    r5 = torch.as_tensor(risk5, dtype=torch.float64).reshape(-1, 1)
    k = torch.arange(1, years + 1, dtype=torch.float64) / years
    return 1 - (1 - r5) ** k


def spearman(a, b) -> float:
    """Spearman rank correlation (SciPy's, average ranks for ties); NaN when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # undefined; checked here so SciPy does not warn
        return float("nan")
    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------- data


def build_library(work: Path, patients: int, seed: int, log=print):
    """Generate the synthetic cohort into `work` and import it into a library there."""
    from mamview.core.demo_data import generate_cohort
    from mamview.core.ingest import run_import
    from mamview.core.paths import Library

    t0 = time.perf_counter()
    cohort = work / "cohort"
    summary = generate_cohort(cohort, n_patients=patients, size="small", seed=seed)
    log(f"cohort: {summary.patients} women, {summary.exams} exams, {summary.images} images "
        f"({time.perf_counter() - t0:.0f} s)")
    lib = Library(work / "library")
    gen = run_import(lib, sorted(p for p in cohort.iterdir() if p.is_dir()), make_previews=False)
    for _ in gen:
        pass
    return cohort, lib


def load_exams(cohort: Path, lib, config: MiraiConfig, log=print) -> tuple[list[ExamData], int]:
    """Every complete exam of the library, preprocessed as inference does, with its truth.

    Returns the exams and the number of incomplete exams left out.
    """
    from mamview.core.cache import reads
    from mamview.core.cache.db import connect
    from mamview.core.services.inference import exam_inputs, load_view

    truth = {}
    with open(cohort / "ground_truth.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            truth[row["study_instance_uid"]] = float(row["risk_5y_percent"]) / 100.0
    db = connect(lib.database)
    out, skipped = [], 0
    min_height = 2 * config.input_height  # what registry.load sets for the demo model
    t0 = time.perf_counter()
    try:
        for exam in reads.list_exams(db):
            if not exam["complete"]:
                skipped += 1
                continue
            risks = {truth[u] for u in exam["study_uids"] if u in truth}
            if len(risks) != 1:
                raise RuntimeError(f"{exam['exam_key']}: no unique ground truth ({risks})")
            rows = exam_inputs(db, exam["exam_key"])
            views = [load_view(r, min_height) for r in rows]
            t = preprocess_exam(views, config.input_height, config.input_width, config.img_mean,
                                config.img_std, config.num_chan)
            out.append(ExamData(exam["patient_id"], exam["exam_key"],
                                t.images[0, :, :1].clone(), t.view_seq[0], t.side_seq[0],
                                risks.pop()))
    finally:
        db.close()
    log(f"loaded {len(out)} complete exams ({skipped} incomplete left out, "
        f"{time.perf_counter() - t0:.0f} s)")
    return out, skipped


def exam_cache_key(patients: int, seed: int, config: MiraiConfig) -> dict:
    """What a cache of preprocessed exams depends on: the cohort, the generator's code and
    everything `load_exams` feeds through (input size, preprocessing version, statistics)."""
    from mamview.core import demo_data

    generator = hashlib.sha256(Path(demo_data.__file__).read_bytes()).hexdigest()
    return {"patients": patients, "seed": seed, "generator_sha256": generator,
            "input": [config.input_height, config.input_width],
            "preprocessing_version": demo_preprocessing_version(config),
            "img_mean": config.img_mean, "img_std": config.img_std}


def cached_exams(cache: Path | None, patients: int, seed: int, config: MiraiConfig,
                 work_dir: Path | None, log=print) -> tuple[list[ExamData], int]:
    """`build_library` + `load_exams`, reusing `cache` (a torch file) when its key matches.

    Generating and decoding the cohort takes longer than training on a busy machine; the cache
    lets experiments and re-runs skip it without changing a single input pixel.
    """
    key = exam_cache_key(patients, seed, config)
    if cache is not None and Path(cache).is_file():
        try:
            saved = torch.load(cache, weights_only=True)
        except Exception as exc:  # a damaged or foreign file: rebuild, never trust it
            log(f"exam cache {cache} unreadable ({exc}); rebuilding")
            saved = None
        if saved is not None and saved.get("key") == key:
            exams = [ExamData(*fields) for fields in zip(
                saved["patient_id"], saved["exam_key"], saved["image"], saved["view_seq"],
                saved["side_seq"], saved["risk5"])]
            log(f"loaded {len(exams)} preprocessed exams from {cache}")
            return exams, int(saved["skipped"])
        if saved is not None:
            log(f"exam cache {cache} was made for other inputs; rebuilding")
    with tempfile.TemporaryDirectory(prefix="mamview-demo-train-", dir=work_dir) as tmp:
        cohort, lib = build_library(Path(tmp), patients, seed, log)
        exams, skipped = load_exams(cohort, lib, config, log)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "skipped": skipped,
                    "patient_id": [e.patient_id for e in exams],
                    "exam_key": [e.exam_key for e in exams],
                    "image": [e.image for e in exams], "view_seq": [e.view_seq for e in exams],
                    "side_seq": [e.side_seq for e in exams],
                    "risk5": [e.risk5 for e in exams]}, cache)
    return exams, skipped


def split_women(exams: list[ExamData], seed: int) -> dict[str, list[ExamData]]:
    """Train / val / test by woman, stratified so that each split gets its share of cases
    (women whose highest risk is well above the controls' ~2 %)."""
    peak: dict[str, float] = {}
    for e in exams:
        peak[e.patient_id] = max(peak.get(e.patient_id, 0.0), e.risk5)
    rng = np.random.default_rng(seed + 1)
    groups = {"val": [], "test": [], "train": []}
    for stratum in (sorted(p for p, r in peak.items() if r >= 0.03),
                    sorted(p for p, r in peak.items() if r < 0.03)):
        ids = list(rng.permutation(stratum))
        n_test = int(round(TEST_FRACTION * len(ids)))
        n_val = int(round(VAL_FRACTION * len(ids)))
        groups["test"] += ids[:n_test]
        groups["val"] += ids[n_test:n_test + n_val]
        groups["train"] += ids[n_test + n_val:]
    where = {p: g for g, ps in groups.items() for p in ps}
    return {g: [e for e in exams if where[e.patient_id] == g] for g in groups}


def batch_of(exams: list[ExamData], num_chan: int, augment: torch.Generator | None = None):
    """Stack exams → (x [B, 4, C, H, W], view_seq, side_seq, risk5 float64 [B])."""
    x = torch.stack([e.image for e in exams])
    if augment is not None:
        # vertical flips and small intensity jitter; the risk signal (specks) is unaffected
        flip = torch.rand(x.shape[0], generator=augment) < 0.5
        x[flip] = torch.flip(x[flip], dims=[-2])
        x = x * (1 + 0.05 * torch.randn(x.shape[0], 1, 1, 1, 1, generator=augment))
    x = x.expand(-1, -1, num_chan, -1, -1)
    return (x, torch.stack([e.view_seq for e in exams]), torch.stack([e.side_seq for e in exams]),
            torch.tensor([e.risk5 for e in exams], dtype=torch.float64))


# ---------------------------------------------------------------- training


def raw_logits(net: MiraiNet, exams: list[ExamData], batch_size: int = 16) -> torch.Tensor:
    """Network logits [N, 5] in eval mode."""
    net.eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(exams), batch_size):
            x, v, s, _ = batch_of(exams[i:i + batch_size], net.config.num_chan)
            outs.append(net(x, v, s).float())
    return torch.cat(outs) if outs else torch.empty(0, YEARS)


def pairwise_rank_loss(pred: torch.Tensor, target: torch.Tensor, margin: float = 0.02,
                       temperature: float = 0.1) -> torch.Tensor:
    """Logistic loss on every pair of exams in the batch whose targets differ by > `margin`
    (logit units): penalises predicting them in the wrong order. Why: most exams are controls
    whose risks differ by a few tenths of a percent, too little for squared error to order."""
    dt = target[:, None] - target[None, :]
    dp = pred[:, None] - pred[None, :]
    pairs = dt.abs() > margin
    if not bool(pairs.any()):
        return pred.sum() * 0
    return F.softplus(-torch.sign(dt[pairs]) * dp[pairs] / temperature).mean()


def train(net: MiraiNet, train_set: list[ExamData], epochs: int, seed: int, batch_size: int = 8,
          lr: float = 2e-3, rank_weight: float = 0.0, log=print) -> list[float]:
    """AdamW + one-cycle schedule; squared error between logits and logit(target) per year,
    plus `rank_weight` × a pairwise ranking loss on the 5-year logit."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(train_set) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.2)
    # initialise the base hazard at the mean target so training starts near the answer
    with torch.no_grad():
        mean_logit = torch.logit(yearly_targets([e.risk5 for e in train_set])[:, 0]).mean()
        net.aggregator.prob_of_failure_layer.base_hazard_fc.bias.fill_(float(mean_logit))
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_set), generator=gen).tolist()
        total, t0 = 0.0, time.perf_counter()
        for i in range(0, len(order), batch_size):
            chunk = [train_set[j] for j in order[i:i + batch_size]]
            if len(chunk) < 2:  # BatchNorm needs more than one sample
                continue
            x, v, s, r5 = batch_of(chunk, net.config.num_chan, augment=gen)
            target = torch.logit(yearly_targets(r5)).float()
            out = net(x, v, s)
            loss = F.mse_loss(out, target)
            if rank_weight:
                loss = loss + rank_weight * pairwise_rank_loss(out[:, -1], target[:, -1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(chunk)
        history.append(total / len(train_set))
        log(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return history


def fit_calibrator(logits: torch.Tensor, risk5: np.ndarray) -> MiraiCalibrator:
    """Per-year Platt coefficients: calibrated = sigmoid(α + β·sigmoid(logit)).

    Least squares on the logit scale of the yearly targets (the risks are continuous truths,
    not binary outcomes). Falls back to one shared (α, β) for all years when the per-year fit
    would let a calibrated risk fall from one year to the next on the validation exams.
    """
    x = torch.sigmoid(logits.float()).double().numpy()  # float32 probabilities, as at inference
    y = torch.logit(yearly_targets(risk5)).numpy()

    def fit(xs, ys):
        A = np.stack([np.ones_like(xs), xs], axis=1)
        (alpha, beta), *_ = np.linalg.lstsq(A, ys, rcond=None)
        return float(alpha), float(max(beta, 1e-6))  # never invert the order of risks

    pairs = [fit(x[:, k], y[:, k]) for k in range(YEARS)]
    cal = MiraiCalibrator.from_alpha_beta(pairs, calibrator_id="demo-platt-val")
    if np.any(np.diff(cal(x.astype(np.float32)), axis=1) < 0):
        shared = fit(x.reshape(-1), y.reshape(-1))
        cal = MiraiCalibrator.from_alpha_beta([shared] * YEARS, calibrator_id="demo-platt-val")
    return cal


def evaluate(net: MiraiNet, cal: MiraiCalibrator, exams: list[ExamData]) -> dict:
    """Agreement of calibrated 5-year risk with the truth: Spearman ρ, MAE (pp), monotonicity."""
    logits = raw_logits(net, exams)
    risk = cal(torch.sigmoid(logits).numpy())
    truth = np.array([e.risk5 for e in exams])
    pred5 = risk[:, -1]
    return {
        "exams": len(exams), "women": len({e.patient_id for e in exams}),
        "spearman_5y": round(spearman(pred5, truth), 4),
        "mae_5y_pp": round(float(np.mean(np.abs(pred5 - truth)) * 100), 4),
        "max_abs_error_5y_pp": round(float(np.max(np.abs(pred5 - truth)) * 100), 4),
        "truth_5y_percent_range": [round(float(truth.min()) * 100, 3),
                                   round(float(truth.max()) * 100, 3)],
        "monotone_over_years": bool(np.all(np.diff(risk, axis=1) >= 0)),
    }


# ---------------------------------------------------------------- main


def run(out: Path, patients: int = 160, seed: int = 0, epochs: int = 14, threads: int | None = None,
        work_dir: Path | None = None, lr: float = 2e-3, exam_cache: Path | None = None,
        rank_weight: float = 0.0, log=print) -> dict:
    """Train, evaluate and write the demo model into `out`; returns the provenance."""
    from mamview.core.models.converted import write_converted

    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    seed_everything(seed)
    config = MiraiConfig(**DEMO_CONFIG)
    exams, skipped = cached_exams(exam_cache, patients, seed, config, work_dir, log)
    splits = split_women(exams, seed)
    log("split (women/exams): " + ", ".join(
        f"{g} {len({e.patient_id for e in s})}/{len(s)}" for g, s in splits.items()))

    seed_everything(seed)
    net = MiraiNet(config)
    t_train = time.perf_counter()
    history = train(net, splits["train"], epochs, seed, lr=lr, rank_weight=rank_weight, log=log)
    train_s = time.perf_counter() - t_train

    cal = fit_calibrator(raw_logits(net, splits["val"]),
                         np.array([e.risk5 for e in splits["val"]]))
    metrics = {g: evaluate(net, cal, s) for g, s in splits.items()}
    log("held-out women: " + str(metrics["test"]))

    net.eval()
    weights_sha = state_dict_sha256(net.state_dict())
    version = hashlib.sha256((weights_sha + cal.sha256).encode()).hexdigest()[:12]
    identity = ModelIdentity(
        model_id="demo", name="Mirai-architecture demo model", version=version,
        weights_sha256=weights_sha, calibrator_id=cal.calibrator_id,
        calibrator_sha256=cal.sha256, preprocessing_version=demo_preprocessing_version(config),
        clinically_validated=False, label=DEMO_LABEL)
    provenance = {
        "trainer": "tools.train_demo",
        "command": "python -m tools.train_demo --out OUT "
                   f"--patients {patients} --seed {seed} --epochs {epochs} --lr {lr} "
                   f"--rank-weight {rank_weight}",
        "seed": seed, "patients": patients, "epochs": epochs, "learning_rate": lr,
        "cohort": {"generator": "mamview.core.demo_data.generate_cohort", "size": "small",
                   "seed": seed, "complete_exams": len(exams), "incomplete_exams_left_out": skipped},
        "split_by_woman": {g: {"women": len({e.patient_id for e in s}), "exams": len(s)}
                           for g, s in splits.items()},
        "targets": "r_k = 1 - (1 - r5)^(k/5), k = 1..5; MSE on the logit scale"
                   + (f" + {rank_weight} x pairwise logistic ranking loss on the 5-year logit"
                      if rank_weight else ""),
        "rank_weight": rank_weight,
        "calibrator": "per-year Platt sigmoid(alpha + beta*sigmoid(logit)) fitted on the "
                      "validation women (least squares on the logit scale)",
        "decode_min_height": 2 * config.input_height,
        "train_loss": [round(v, 5) for v in history],
        "metrics": metrics,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(), "threads": torch.get_num_threads(),
        "note": "synthetic images whose risk is drawn into the pixels; not for clinical use",
    }
    write_converted(Path(out), net, cal, identity, provenance)
    log(f"wrote {out} (version {version}) in {provenance['total_seconds']:.0f} s")
    return provenance


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--patients", type=int, default=160, help="synthetic women (default 160)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the temporary cohort and library go (default: system temp)")
    p.add_argument("--exam-cache", type=Path, default=None,
                   help="torch file of preprocessed exams to reuse (written if absent or stale)")
    p.add_argument("--rank-weight", type=float, default=0.0,
                   help="weight of the pairwise ranking loss on the 5-year logit (default 0)")
    args = p.parse_args(argv)
    run(args.out, args.patients, args.seed, args.epochs, args.threads, args.work_dir, args.lr,
        exam_cache=args.exam_cache, rank_weight=args.rank_weight,
        log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
