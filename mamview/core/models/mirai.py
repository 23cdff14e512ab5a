"""Mirai's inference architecture, written from the specification (shared/reference/mirai.md §4-5).

    x [B, 4, 3, H, W] ─ image_encoder (ResNet-18 trunk, shared over views) ─ global max pool
        → [B, 4, 512] ─ aggregator:
            + mask_embedding row 1 ─ projection_layer ─ view/time/side conditioning
            ─ transformer layer(s) ─ view pool (attention | max | avg) → [B, H]
            ─ 34 risk-factor heads (softmax/sigmoid, 100 values) ─ cat ─ ReLU
            ─ additive-hazard layer → logits [B, 5]
    sigmoid(logits) ─ per-year Platt calibrator → cumulative risk for years 1..5

Input layout: views first, **x [B, N=4, C=3, H, W]** (the reference collates [B, C, N, H, W] and
transposes back to views-first before the encoder; we skip that round trip).

Submodule and parameter names mirror the official snapshots so that conversion is a prefix
rename (see `official.readers.OFFICIAL_KEY_MAPPING`):
    encoder snapshot  `_model.<downsampler|layerL_j>.*`  →  `image_encoder.*`
    transformer snapshot  `<projection_layer|mask_embedding|transformer|pool|
                            prob_of_failure_layer>.*`  →  `aggregator.*`
(`upper_triagular_mask` keeps the reference's spelling for the same reason.)

The network has no positional encoding besides the view/side/time embeddings and pools views with
a permutation-invariant operator, so its output does not depend on view order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import YEARS, ExamTensors, ModelInputError, RiskModel
from .errors import ModelUnavailable
from .identity import ModelIdentity
from .preprocess import PREPROCESSING_VERSION, PreprocessSpec, preprocess_exam

#: The 34 predicted risk factors in the reference order with their class counts (spec §4.4).
#: n_k = 1 → sigmoid, otherwise softmax. Total 100. (`p_grantmother` is the reference spelling.)
RISK_FACTORS: tuple[tuple[str, int], ...] = (
    ("density", 4), ("binary_family_history", 1), ("binary_biopsy_benign", 1),
    ("binary_biopsy_LCIS", 1), ("binary_biopsy_atypical_hyperplasia", 1), ("age", 6),
    ("menarche_age", 5), ("menopause_age", 5), ("first_pregnancy_age", 6), ("prior_hist", 1),
    ("race", 13), ("parous", 1), ("menopausal_status", 4), ("weight", 7), ("height", 7),
    ("ovarian_cancer", 1), ("ovarian_cancer_age", 6), ("ashkenazi", 1), ("brca", 4),
    ("mom_bc_cancer_history", 1), ("m_aunt_bc_cancer_history", 1),
    ("p_aunt_bc_cancer_history", 1), ("m_grandmother_bc_cancer_history", 1),
    ("p_grantmother_bc_cancer_history", 1), ("sister_bc_cancer_history", 1),
    ("mom_oc_cancer_history", 1), ("m_aunt_oc_cancer_history", 1),
    ("p_aunt_oc_cancer_history", 1), ("m_grandmother_oc_cancer_history", 1),
    ("p_grantmother_oc_cancer_history", 1), ("sister_oc_cancer_history", 1),
    ("hrt_type", 3), ("hrt_duration", 5), ("hrt_years_ago_stopped", 5),
)

VIEW_POOLS = ("attention", "max", "avg")


@dataclass(frozen=True)
class MiraiConfig:
    """Hyper-parameters of a Mirai-architecture network plus its preprocessing constants.

    Defaults are the released model's, except `num_heads` and `view_pool`, which the spec marks
    uncertain: converted snapshots always carry the values read from the pickled files.
    """

    # image encoder (ResNet trunk of BasicBlocks; stem width = first stage width)
    trunk_widths: tuple[int, ...] = (64, 128, 256, 512)
    trunk_blocks: tuple[int, ...] = (2, 2, 2, 2)
    num_chan: int = 3
    bn_eps: float = 1e-5
    # preprocessing (spec §3): rows, columns, and the training PNG16 statistics
    input_height: int = 2048
    input_width: int = 1664
    img_mean: float = 7047.99
    img_std: float = 12005.5
    # aggregator
    num_views: int = 4
    transformer_hidden_dim: int = 512
    num_heads: int = 8  # reference parser default; read from the snapshot when converting
    num_layers: int = 1
    embed_dim: int = 32  # per embedding; view, time and side are concatenated (96)
    max_time: int = 10
    max_views: int = 2
    max_sides: int = 2
    layernorm_eps: float = 1e-5
    view_pool: str = "attention"  # "attention" | "max" | "avg"
    risk_factors: tuple[tuple[str, int], ...] = RISK_FACTORS
    # additive-hazard head
    max_followup: int = YEARS

    def __post_init__(self) -> None:
        # JSON gives lists; freeze them so the config stays hashable and comparable.
        object.__setattr__(self, "trunk_widths", tuple(int(w) for w in self.trunk_widths))
        object.__setattr__(self, "trunk_blocks", tuple(int(b) for b in self.trunk_blocks))
        object.__setattr__(self, "risk_factors",
                           tuple((str(k), int(n)) for k, n in self.risk_factors))
        if len(self.trunk_widths) != len(self.trunk_blocks):
            raise ValueError("trunk_widths and trunk_blocks must have the same length")
        if self.view_pool not in VIEW_POOLS:
            raise ValueError(f"view_pool must be one of {VIEW_POOLS}, not {self.view_pool!r}")
        if self.transformer_hidden_dim % self.num_heads:
            raise ValueError("transformer_hidden_dim must be divisible by num_heads")
        if any(n < 1 for _, n in self.risk_factors):
            raise ValueError("every risk factor needs at least one class")

    @property
    def image_dim(self) -> int:
        """Width of the per-view image feature (512 for ResNet-18)."""
        return self.trunk_widths[-1]

    @property
    def risk_factor_dim(self) -> int:
        """Length of the predicted risk-factor vector (100 for the released model)."""
        return sum(n for _, n in self.risk_factors)

    @property
    def hidden_dim(self) -> int:
        """Input width of the hazard layer: pooled transformer output + risk factors (612)."""
        return self.transformer_hidden_dim + self.risk_factor_dim

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["risk_factors"] = [[k, n] for k, n in self.risk_factors]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MiraiConfig":
        """Inverse of `to_dict`; rejects unknown keys so a typo cannot silently use a default."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown MiraiConfig keys: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """Stable JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MiraiConfig":
        """Parse `to_json` output."""
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------------------------
# Image encoder: ResNet trunk + global max pool


class BasicBlock(nn.Module):
    """out = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)); 3×3 convs without bias."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=eps)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_ch, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut, inplace=True)


class Downsampler(nn.Module):
    """Stem: conv 7×7 s2 → BN → ReLU → max pool 3×3 s2."""

    def __init__(self, in_ch: int, out_ch: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.max_pool2d(x, 3, 2, 1)


class ResNetTrunk(nn.Module):
    """The image encoder: stem, stages `layer{L}_{j}` (L from 1), global max pool → [N, C]."""

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], in_ch: int = 3,
                 eps: float = 1e-5):
        super().__init__()
        self.downsampler = Downsampler(in_ch, widths[0], eps)
        self.layer_names: list[str] = []
        prev = widths[0]
        for stage, (width, n) in enumerate(zip(widths, blocks), start=1):
            for j in range(n):
                stride = 2 if (j == 0 and stage > 1) else 1
                name = f"layer{stage}_{j}"
                self.add_module(name, BasicBlock(prev, width, stride, eps))
                self.layer_names.append(name)
                prev = width

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's activations [N, C, h, w]."""
        x = self.downsampler(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Global max pool; the reference's ReLU after its risk-factor pool is a no-op on these
        # non-negative maxima, so this equals the 512 image features MiraiFull keeps.
        return torch.amax(self.feature_map(x), dim=(-2, -1))


# ----------------------------------------------------------------------------------------------
# Aggregator: transformer over the four view tokens


class MultiHeadAttention(nn.Module):
    """Unmasked scaled dot-product attention; head j uses features [j·d, (j+1)·d)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.dim_per_head = dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.aggregate_fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        h, d = self.num_heads, self.dim_per_head

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d).transpose(1, 2)  # [B, h, N, d]

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        return self.aggregate_fc(out)


class TransformerLayer(nn.Module):
    """Post-LayerNorm block: x = LN(MHA(x) + x); x = LN(fc2(ReLU(fc1(x))) + x)."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.multihead_attention = MultiHeadAttention(dim, num_heads)
        self.layernorm_attn = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.layernorm_fc = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layernorm_attn(self.multihead_attention(x) + x)
        return self.layernorm_fc(self.fc2(F.relu(self.fc1(x))) + x)


class ConditionedTransformer(nn.Module):
    """View/time/side conditioning (x ← scale(e) ⊙ x + add(e)) followed by the layers."""

    def __init__(self, cfg: MiraiConfig):
        super().__init__()
        dim, e = cfg.transformer_hidden_dim, cfg.embed_dim
        # padding_idx=-1 (last row) as in the reference; single exams never index it.
        self.time_embed = nn.Embedding(cfg.max_time + 1, e, padding_idx=-1)
        self.view_embed = nn.Embedding(cfg.max_views + 1, e, padding_idx=-1)
        self.side_embed = nn.Embedding(cfg.max_sides + 1, e, padding_idx=-1)
        self.embed_add_fc = nn.Linear(3 * e, dim)
        self.embed_scale_fc = nn.Linear(3 * e, dim)
        self.num_layers = cfg.num_layers
        for i in range(cfg.num_layers):
            self.add_module(f"transformer_layer_{i}",
                            TransformerLayer(dim, cfg.num_heads, cfg.layernorm_eps))

    def forward(self, x: torch.Tensor, view_seq: torch.Tensor, side_seq: torch.Tensor,
                time_seq: torch.Tensor) -> torch.Tensor:
        # Order view, time, side matters: it is the order the trained weights expect.
        e = torch.cat([self.view_embed(view_seq), self.time_embed(time_seq),
                       self.side_embed(side_seq)], dim=-1)
        x = self.embed_scale_fc(e) * x + self.embed_add_fc(e)
        for i in range(self.num_layers):
            x = getattr(self, f"transformer_layer_{i}")(x)
        return x


class ViewPool(nn.Module):
    """Pool over the view tokens [B, N, D] → ([B, D], weights [B, N])."""

    def __init__(self, dim: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.attention_fc = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[1]
        if self.kind == "attention":
            w = torch.softmax(self.attention_fc(x).squeeze(-1), dim=-1)
            return (w.unsqueeze(-1) * x).sum(dim=1), w
        if self.kind == "max":
            pooled, idx = x.max(dim=1)
            w = F.one_hot(idx, n).to(x.dtype).mean(dim=1)  # share of features each view won
            return pooled, w
        return x.mean(dim=1), x.new_full(x.shape[:2], 1.0 / n)


class RiskFactorPool(nn.Module):
    """View pool + the 34 predicted risk-factor heads `{key}_fc` on the pooled vector."""

    def __init__(self, cfg: MiraiConfig):
        super().__init__()
        dim = cfg.transformer_hidden_dim
        self.internal_pool = ViewPool(dim, cfg.view_pool)
        self.risk_factors = cfg.risk_factors
        for key, n in cfg.risk_factors:
            self.add_module(f"{key}_fc", nn.Linear(dim, n))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, D] → (pooled [B, D], risk-factor probabilities [B, 100], view weights)."""
        pooled, weights = self.internal_pool(x)
        probs = []
        for key, n in self.risk_factors:
            logit = getattr(self, f"{key}_fc")(pooled)
            probs.append(torch.sigmoid(logit) if n == 1 else torch.softmax(logit, dim=-1))
        return pooled, torch.cat(probs, dim=-1), weights


class CumulativeProbabilityLayer(nn.Module):
    """Additive hazard: logit_t = b + Σ_{i≤t} ReLU(hazard_fc(h))_i (spec §4.5)."""

    def __init__(self, in_dim: int, max_followup: int):
        super().__init__()
        self.hazard_fc = nn.Linear(in_dim, max_followup)
        self.base_hazard_fc = nn.Linear(in_dim, 1)
        # M[i, t] = 1 iff i <= t. Stored (not recomputed) because the reference stores it.
        self.register_buffer("upper_triagular_mask",
                             torch.triu(torch.ones(max_followup, max_followup)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hazards = F.relu(self.hazard_fc(h))  # [B, T]
        base = self.base_hazard_fc(h)  # [B, 1]
        mask = self.upper_triagular_mask.to(hazards.dtype)
        return (hazards.unsqueeze(-1) * mask).sum(dim=1) + base


class AggregatorOutput(NamedTuple):
    """Logits plus the interpretable by-products (predicted risk factors, view weights)."""

    logits: torch.Tensor  # [B, 5]
    risk_factors: torch.Tensor  # [B, 100] predicted probabilities, RISK_FACTORS order
    view_weights: torch.Tensor  # [B, 4]


class Aggregator(nn.Module):
    """Transformer aggregator over the four per-view image features."""

    def __init__(self, cfg: MiraiConfig):
        super().__init__()
        self.num_views = cfg.num_views
        # Row 1 is added at inference (the reference's "kept" index); it is the padding row.
        self.mask_embedding = nn.Embedding(2, cfg.image_dim, padding_idx=1)
        self.projection_layer = nn.Linear(cfg.image_dim, cfg.transformer_hidden_dim)
        self.transformer = ConditionedTransformer(cfg)
        self.pool = RiskFactorPool(cfg)
        self.prob_of_failure_layer = CumulativeProbabilityLayer(cfg.hidden_dim, cfg.max_followup)

    def forward_details(self, feats: torch.Tensor, view_seq: torch.Tensor, side_seq: torch.Tensor,
                        time_seq: torch.Tensor) -> AggregatorOutput:
        """feats [B, 4, image_dim] → AggregatorOutput."""
        if feats.shape[1] != self.num_views:
            raise ModelInputError(f"expected {self.num_views} views, got {feats.shape[1]}")
        x = feats + self.mask_embedding.weight[1]
        x = self.projection_layer(x)
        x = self.transformer(x, view_seq, side_seq, time_seq)
        pooled, rf, weights = self.pool(x)
        hidden = F.relu(torch.cat([pooled, rf], dim=-1))  # the pooled half can be negative
        return AggregatorOutput(self.prob_of_failure_layer(hidden), rf, weights)

    def forward(self, feats: torch.Tensor, view_seq: torch.Tensor, side_seq: torch.Tensor,
                time_seq: torch.Tensor) -> torch.Tensor:
        return self.forward_details(feats, view_seq, side_seq, time_seq).logits


class MiraiNet(nn.Module):
    """Mirai: shared image encoder over the four views + transformer aggregator → logits [B, 5].

    `forward(x, view_seq, side_seq, time_seq=None)` with x float [B, 4, 3, H, W] (views first)
    and the sequences int64 [B, 4]. time_seq defaults to zeros (single exam).
    """

    def __init__(self, config: MiraiConfig | None = None):
        super().__init__()
        self.config = config or MiraiConfig()
        c = self.config
        self.image_encoder = ResNetTrunk(c.trunk_widths, c.trunk_blocks, c.num_chan, c.bn_eps)
        self.aggregator = Aggregator(c)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 4, C, H, W] → per-view max-pooled trunk features [B, 4, image_dim]."""
        if x.dim() != 5:
            raise ModelInputError(f"expected x [B, 4, C, H, W], got shape {tuple(x.shape)}")
        b, n = x.shape[:2]
        flat = x.reshape(b * n, *x.shape[2:])
        if self.image_encoder.downsampler.conv1.weight.is_contiguous(
                memory_format=torch.channels_last):
            # Model was converted with .to(memory_format=channels_last): match it, or every
            # conv would pay a layout conversion.
            flat = flat.contiguous(memory_format=torch.channels_last)
        return self.image_encoder(flat).reshape(b, n, -1)

    def forward_details(self, x: torch.Tensor, view_seq: torch.Tensor, side_seq: torch.Tensor,
                        time_seq: torch.Tensor | None = None) -> AggregatorOutput:
        """Like forward, but also returns predicted risk factors and view weights."""
        if time_seq is None:
            time_seq = torch.zeros_like(view_seq)
        feats = self.image_features(x)
        # The aggregator is tiny; run it in float32 even under autocast for stable logits.
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return self.aggregator.forward_details(feats.float(), view_seq, side_seq, time_seq)

    def forward(self, x: torch.Tensor, view_seq: torch.Tensor, side_seq: torch.Tensor,
                time_seq: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_details(x, view_seq, side_seq, time_seq).logits


# ----------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True)
class PlattTerm:
    """One frozen sklearn CalibratedClassifierCV member: linear base estimator + Platt sigmoid.

    P(x) = 1 / (1 + exp(platt_slope · (base_slope · x + base_offset) + platt_offset)),
    i.e. sigmoid(α + β·x) with α = −(platt_slope·base_offset + platt_offset) and
    β = −platt_slope·base_slope (spec §5).
    """

    base_slope: float
    base_offset: float
    platt_slope: float
    platt_offset: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.base_slope * x + self.base_offset
        y = self.platt_slope * y + self.platt_offset
        return 1.0 / (1.0 + np.exp(y))

    @property
    def alpha_beta(self) -> tuple[float, float]:
        """The only observable quantities: calibrated = sigmoid(α + β·x)."""
        return (-(self.platt_slope * self.base_offset + self.platt_offset),
                -self.platt_slope * self.base_slope)


@dataclass(frozen=True)
class MiraiCalibrator:
    """Per-year calibration of raw sigmoid(logit) into risk. `years[k]` calibrates year k+1.

    Each year is the mean of its terms' probabilities (one term for the released file; sklearn
    with several CV folds averages them, so we keep that generality).
    """

    years: tuple[tuple[PlattTerm, ...], ...]
    calibrator_id: str = ""

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """Raw probabilities [B, Y] (float32 like the reference) → calibrated float64 [B, Y]."""
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.years):
            raise ValueError(f"expected probabilities [B, {len(self.years)}], got {p.shape}")
        out = np.empty_like(p)
        for k, terms in enumerate(self.years):
            out[:, k] = np.mean([t(p[:, k]) for t in terms], axis=0)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: coefficients per year plus the derived (α, β) for readers."""
        return {
            "format": "mamview-calibrator/1",
            "calibrator_id": self.calibrator_id,
            "formula": "P = mean over terms of 1/(1+exp(platt_slope*(base_slope*x+base_offset)"
                       "+platt_offset)), x = sigmoid(logit) as float32",
            "years": [{"year": k + 1,
                       "terms": [dataclasses.asdict(t) for t in terms],
                       "alpha_beta": [list(t.alpha_beta) for t in terms]}
                      for k, terms in enumerate(self.years)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MiraiCalibrator":
        """Inverse of `to_dict`."""
        years = tuple(tuple(PlattTerm(**{k: float(v) for k, v in t.items()}) for t in y["terms"])
                      for y in sorted(data["years"], key=lambda y: y["year"]))
        return cls(years, data.get("calibrator_id", ""))

    @classmethod
    def from_alpha_beta(cls, pairs: Sequence[tuple[float, float]],
                        calibrator_id: str = "") -> "MiraiCalibrator":
        """Build from sigmoid(α + β·x) pairs (e.g. the table in spec §5.2, or a demo model)."""
        return cls(tuple((PlattTerm(b, a, -1.0, 0.0),) for a, b in pairs), calibrator_id)

    @property
    def sha256(self) -> str:
        """Hash of the coefficients (exact float reprs), independent of file formatting."""
        blob = json.dumps([[dataclasses.astuple(t) for t in y] for y in self.years])
        return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The RiskModel


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict: names, dtypes, shapes and bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class MiraiRiskModel(RiskModel):
    """A MiraiNet with its calibrator and identity, on one device.

    A model folder on disk is loaded by `converted.load_model` (this module does not read files,
    so the readers can import it without a cycle).
    """

    def __init__(self, net: MiraiNet, calibrator: MiraiCalibrator, identity: ModelIdentity,
                 device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None):
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        if self.device.type in ("cuda", "cpu"):
            # ~1.4× faster on CPU (oneDNN) and the usual win on GPU; logits agree to 1e-5.
            self.net = self.net.to(memory_format=torch.channels_last)
        self.calibrator = calibrator
        self._identity = identity
        # bf16 autocast is opt-in: it changes risks in the 4th decimal on some exams.
        self.autocast_dtype = autocast_dtype
        if len(calibrator.years) != net.config.max_followup:
            raise ModelUnavailable("calibrator and network disagree on the number of years")

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def config(self) -> MiraiConfig:
        """The network's configuration."""
        return self.net.config

    @property
    def preprocess_spec(self) -> PreprocessSpec:
        """The numbers of `preprocess`, for decode processes (`preprocess.grey_exam`)."""
        c = self.config
        return PreprocessSpec(c.input_height, c.input_width, c.img_mean, c.img_std, c.num_chan)

    def preprocess(self, images: Sequence[Any]) -> ExamTensors:
        c = self.config
        return preprocess_exam(images, c.input_height, c.input_width, c.img_mean, c.img_std,
                               c.num_chan)

    @torch.inference_mode()
    def logits(self, batch: ExamTensors) -> torch.Tensor:
        """Raw logits [B, 5] (float32, on CPU)."""
        b = batch.to(self.device)
        enabled = self.autocast_dtype is not None
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype,
                            enabled=enabled):
            out = self.net(b.images, b.view_seq, b.side_seq, b.time_seq)
        return out.float().cpu()

    def predict(self, batch: ExamTensors) -> np.ndarray:
        probs = torch.sigmoid(self.logits(batch)).numpy()  # float32, as the reference
        return self.calibrator(probs)


def demo_preprocessing_version(config: MiraiConfig) -> str:
    """Preprocessing of a reduced model such as the bundled demo: the same stages, fed by a
    reduced decode (at least 2× the input height, as `registry.load` sets) at a smaller size."""
    return (f"{PREPROCESSING_VERSION}+reduced-decode-2x"
            f"+input-{config.input_height}x{config.input_width}")


def check_preprocessing_version(identity: ModelIdentity,
                                config: MiraiConfig | None = None) -> None:
    """Refuse a model whose preprocessing differs from the code that will feed it.

    With `config`, the reduced-decode variant for that config's input size is accepted too.
    """
    accepted = {PREPROCESSING_VERSION}
    if config is not None:
        accepted.add(demo_preprocessing_version(config))
    if identity.preprocessing_version not in accepted:
        raise ModelUnavailable(
            f"model expects preprocessing {identity.preprocessing_version!r}, this build "
            f"implements {' or '.join(sorted(accepted))!r}", "convert the weights again")
