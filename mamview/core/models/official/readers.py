"""The three release files → what they say: the encoder's trunk, the transformer's aggregator
(with the evidence for each hyper-parameter) and the calibrator's Platt terms.

Key mapping from the official snapshots to `MiraiNet` (everything else is refused, except the
listed heads the released inference computes and then discards):

    encoder      `_model.downsampler.*`            → `image_encoder.downsampler.*`
                 `_model.layer{L}_{j}.*`            → `image_encoder.layer{L}_{j}.*`
                 `_model.pool.*`, `_model.fc.*`, `_model.prob_of_failure_layer.*` → dropped
    transformer  `mask_embedding.*`, `projection_layer.*`, `transformer.*`, `pool.*`,
                 `prob_of_failure_layer.*`          → `aggregator.` + same name
                 `kept_images_vec`, `pred_masked_img_fc.*`, `fc.*` → dropped
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mamview.core.errors import LimitExceeded
from mamview.core.models.errors import SnapshotFormatError
from mamview.core.models.mirai import MiraiCalibrator, PlattTerm
from mamview.core.safety import printable

from .inert import class_name
from .limits import short
from .walk import (child, child_modules, module_state_dict, pickled_arg, pickled_attrs, plain,
                   unwrap_model, walking)


@dataclass
class EncoderInfo:
    """What the encoder snapshot says about itself."""

    state: dict[str, torch.Tensor]
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    num_chan: int
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransformerInfo:
    """What the transformer snapshot says about itself, and where each value came from."""

    state: dict[str, torch.Tensor]
    hidden_dim: int
    image_dim: int
    num_heads: int
    num_layers: int
    embed_dim: int
    max_time: int
    view_pool: str
    risk_factors: tuple[tuple[str, int], ...]
    max_followup: int
    evidence: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: How official state-dict keys become MiraiNet keys: (snapshot, official prefix, our prefix).
#: The first matching prefix wins; None drops heads the released inference computes and
#: discards. A key matching no row is refused, so nothing unknown is silently ignored.
OFFICIAL_KEY_MAPPING: tuple[tuple[str, str, str | None], ...] = (
    ("encoder", "_model.downsampler.", "image_encoder.downsampler."),
    ("encoder", "_model.layer", "image_encoder.layer"),
    ("encoder", "_model.pool.", None),  # the encoder's own risk-factor heads
    ("encoder", "_model.fc.", None),
    ("encoder", "_model.prob_of_failure_layer.", None),
    ("transformer", "mask_embedding.", "aggregator.mask_embedding."),
    ("transformer", "projection_layer.", "aggregator.projection_layer."),
    ("transformer", "transformer.", "aggregator.transformer."),
    ("transformer", "pool.", "aggregator.pool."),
    ("transformer", "prob_of_failure_layer.", "aggregator.prob_of_failure_layer."),
    ("transformer", "kept_images_vec", None),  # all ones; only fixes the view count at 4
    ("transformer", "pred_masked_img_fc.", None),  # training-time auxiliary head
    ("transformer", "fc.", None),  # 612→2 classifier whose output is overwritten
)


def _map_key(part: str, key: str) -> str | None:
    for snapshot, official, ours in OFFICIAL_KEY_MAPPING:
        if snapshot == part and key.startswith(official):
            return None if ours is None else ours + key[len(official):]
    raise SnapshotFormatError(f"unexpected {part} key {key!r}")


def map_encoder_key(key: str) -> str | None:
    """Official encoder key → MiraiNet key, or None for heads the inference discards."""
    return _map_key("encoder", key)


def map_transformer_key(key: str) -> str | None:
    """Official transformer key → MiraiNet key, or None for parts unused at inference."""
    return _map_key("transformer", key)


def _tensor(state: dict[str, torch.Tensor], key: str, where: str, ndim: int) -> torch.Tensor:
    """state[key], which must exist and have `ndim` dimensions."""
    t = state.get(key)
    if t is None:
        raise SnapshotFormatError(f"{where}: tensor {key} is missing")
    if t.dim() != ndim:
        raise SnapshotFormatError(f"{where}: tensor {key} has shape {tuple(t.shape)[:8]}, "
                                  f"expected {ndim} dimensions")
    return t


def read_encoder(obj: Any, where: str = "encoder") -> EncoderInfo:
    """Encoder snapshot (CustomResnet → ResNet) → trunk state dict and shape hyper-parameters."""
    with walking(where):
        return _read_encoder(obj, where)


def _read_encoder(obj: Any, where: str) -> EncoderInfo:
    root = unwrap_model(obj, where)
    resnet = child(root, "_model") if "_model" in child_modules(root) else root
    args = pickled_attrs(resnet).get("args") or pickled_attrs(root).get("args")
    if pickled_arg(args, "use_precomputed_hiddens"):
        raise SnapshotFormatError(f"{where}: encoder was saved with use_precomputed_hiddens")
    state = module_state_dict(resnet, "_model.")
    kids = child_modules(resnet)
    stages: dict[int, int] = {}
    for name in kids:
        if name.startswith("layer") and "_" in name:
            stage, _, j = name[5:].partition("_")
            if stage.isdecimal() and j.isdecimal() and len(stage) <= 3 and len(j) <= 3:
                stages[int(stage)] = max(stages.get(int(stage), 0), int(j) + 1)
                block = kids[name]
                if class_name(block) and class_name(block) != "BasicBlock":
                    raise SnapshotFormatError(f"{where}: {class_name(block)} blocks are not "
                                              "supported (expected BasicBlock / ResNet-18)")
    if not stages or sorted(stages) != list(range(1, len(stages) + 1)):
        raise SnapshotFormatError(f"{where}: no ResNet stages layer1_0… found")
    blocks = tuple(stages[s] for s in sorted(stages))
    widths = tuple(int(_tensor(state, f"_model.layer{s}_0.conv1.weight", where, 4).shape[0])
                   for s in sorted(stages))
    stem = _tensor(state, "_model.downsampler.conv1.weight", where, 4)
    if stem.shape[0] != widths[0] or tuple(stem.shape[2:]) != (7, 7):
        raise SnapshotFormatError(f"{where}: unexpected stem {tuple(stem.shape)}")
    return EncoderInfo(state, widths, blocks, int(stem.shape[1]),
                       {k: pickled_arg(args, k) for k in ("block_layout", "img_size", "img_mean",
                                                    "img_std", "num_chan", "img_only_dim",
                                                    "hidden_dim", "pool_name")})


_POOL_KINDS = {"Simple_AttentionPool": "attention", "GlobalMaxPool": "max",
               "GlobalAvgPool": "avg"}


def read_transformer(obj: Any, where: str = "transformer") -> TransformerInfo:
    """Transformer snapshot (AllImageTransformer) → aggregator state dict + hyper-parameters.

    Uncertain hyper-parameters are read, never assumed: heads from `dim_per_head` on the
    attention module and `args.num_heads` (they must agree), the view pool from the pickled
    class of `pool.internal_pool` cross-checked with the presence of `attention_fc` weights.
    """
    with walking(where):
        return _read_transformer(obj, where)


def _read_transformer(obj: Any, where: str) -> TransformerInfo:
    root = unwrap_model(obj, where)
    args = pickled_attrs(root).get("args")
    ev: dict[str, str] = {}
    notes: list[str] = []
    state = module_state_dict(root)
    for flag in ("pred_both_sides", "make_probs_indep"):
        if pickled_arg(args, flag):
            raise SnapshotFormatError(f"{where}: args.{flag}=True is not supported")
    if pickled_arg(args, "survival_analysis_setup") is False:
        raise SnapshotFormatError(f"{where}: model was not trained with the hazard head")

    if state.get("projection_layer.weight") is None:
        raise SnapshotFormatError(f"{where}: no projection_layer")
    proj = _tensor(state, "projection_layer.weight", where, 2)
    hidden, image_dim = int(proj.shape[0]), int(proj.shape[1])

    trans = child(root, "transformer")
    numbers = [n.rsplit("_", 1)[1] for n in child_modules(trans)
               if n.startswith("transformer_layer_")]
    if not all(n.isdecimal() and len(n) <= 3 for n in numbers):
        raise SnapshotFormatError(f"{where}: transformer layers not numbered 0…")
    layers = sorted(int(n) for n in numbers)
    if layers != list(range(len(layers))) or not layers:
        raise SnapshotFormatError(f"{where}: transformer layers missing or not numbered 0…")
    num_layers = len(layers)
    args_layers = pickled_arg(args, "num_layers")
    if args_layers is not None and _count(args_layers, "args.num_layers", where) != num_layers:
        raise SnapshotFormatError(f"{where}: args.num_layers={args_layers} but {num_layers} "
                                  "layers are stored")
    ev["num_layers"] = (f"{num_layers} transformer_layer_* modules; "
                        f"args.num_layers={short(args_layers)}")

    mha = child(trans, "transformer_layer_0.multihead_attention")
    dph = plain(pickled_attrs(mha).get("dim_per_head"))
    args_heads = pickled_arg(args, "num_heads")
    if dph is not None and (isinstance(dph, bool) or not isinstance(dph, int) or dph < 0):
        raise SnapshotFormatError(f"{where}: dim_per_head is not a count ({short(dph)})")
    heads_from_dph = hidden // int(dph) if dph else None
    if dph and hidden % int(dph):
        raise SnapshotFormatError(f"{where}: dim_per_head={dph} does not divide {hidden}")
    if (heads_from_dph and args_heads is not None
            and _count(args_heads, "args.num_heads", where) != heads_from_dph):
        raise SnapshotFormatError(f"{where}: args.num_heads={args_heads} contradicts "
                                  f"dim_per_head={dph}")
    num_heads = heads_from_dph or (_count(args_heads, "args.num_heads", where)
                                   if args_heads is not None else None)
    if not num_heads:
        raise SnapshotFormatError(f"{where}: the number of attention heads is not recorded "
                                  "(neither dim_per_head nor args.num_heads); refusing to guess")
    ev["num_heads"] = f"dim_per_head={dph}; args.num_heads={short(args_heads)}"

    pool = child(root, "pool")
    internal = child_modules(pool).get("internal_pool")
    pool_cls = class_name(internal)
    has_attn = "pool.internal_pool.attention_fc.weight" in state
    view_pool = _POOL_KINDS.get(pool_cls)
    if view_pool is None:
        if internal is not None:
            raise SnapshotFormatError(f"{where}: unsupported view pool {pool_cls!r}")
        view_pool = "attention" if has_attn else None
    if view_pool is None or (view_pool == "attention") != has_attn:
        raise SnapshotFormatError(f"{where}: view pool class {pool_cls!r} does not match the "
                                  f"weights (attention_fc present: {has_attn})")
    ev["view_pool"] = f"pool.internal_pool class {pool_cls!r}; attention_fc weights: {has_attn}"

    # Risk-factor order and class counts from args, verified against the head shapes.
    heads = [n[:-3] for n in child_modules(pool) if n.endswith("_fc") and n != "internal_pool"]
    keys = pickled_arg(args, "risk_factor_keys") or heads
    to_n = pickled_arg(args, "risk_factor_key_to_num_class") or {}
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or not isinstance(to_n, dict)):
        raise SnapshotFormatError(f"{where}: malformed args.risk_factor_keys")
    rfs = []
    for key in keys:
        if state.get(f"pool.{key}_fc.weight") is None:
            raise SnapshotFormatError(f"{where}: risk factor {printable(key)[:60]!r} has no head")
        w = _tensor(state, f"pool.{key}_fc.weight", where, 2)
        n = int(w.shape[0])
        if key in to_n and _count(to_n[key], "args.risk_factor_key_to_num_class", where) != n:
            raise SnapshotFormatError(f"{where}: risk factor {printable(key)[:60]!r} has {n} "
                                      f"outputs, args say {short(to_n[key])}")
        rfs.append((str(key), n))
    if set(k for k, _ in rfs) != set(heads):
        raise SnapshotFormatError(f"{where}: risk-factor heads {sorted(set(heads))} differ from "
                                  "args.risk_factor_keys")
    ev["risk_factors"] = ("args.risk_factor_keys" if pickled_arg(args, "risk_factor_keys")
                          else "module order of pool.*_fc")

    if state.get("prob_of_failure_layer.hazard_fc.weight") is None:
        raise SnapshotFormatError(f"{where}: no prob_of_failure_layer")
    hazard = _tensor(state, "prob_of_failure_layer.hazard_fc.weight", where, 2)
    max_followup = int(hazard.shape[0])
    if int(hazard.shape[1]) != hidden + sum(n for _, n in rfs):
        raise SnapshotFormatError(f"{where}: hazard layer input {hazard.shape[1]} ≠ "
                                  f"{hidden} + risk factors")
    mask = state.get("prob_of_failure_layer.upper_triagular_mask")
    if mask is not None and not torch.equal(mask.float(),
                                            torch.triu(torch.ones_like(mask.float()))):
        notes.append("upper_triagular_mask is not the upper-triangular ones matrix; used as stored")
    if state.get("transformer.time_embed.weight") is None:
        raise SnapshotFormatError(f"{where}: no transformer.time_embed")
    time_w = _tensor(state, "transformer.time_embed.weight", where, 2)
    if mask is None:
        notes.append("upper_triagular_mask missing; the standard mask was used")

    for key in state:
        map_transformer_key(key)  # raises on anything we do not know how to place
    return TransformerInfo(
        state=state, hidden_dim=hidden, image_dim=image_dim, num_heads=num_heads,
        num_layers=num_layers, embed_dim=int(time_w.shape[1]), max_time=int(time_w.shape[0]) - 1,
        view_pool=view_pool, risk_factors=tuple(rfs), max_followup=max_followup, evidence=ev,
        notes=notes)


def _count(value: Any, what: str, where: str) -> int:
    """A non-negative integer read from pickled args (refused, not coerced, otherwise)."""
    v = plain(value)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 31:
        raise SnapshotFormatError(f"{where}: {what} is not a count ({short(v)})")
    return v


def _num(value: Any, what: str) -> float:
    v = plain(value)
    while isinstance(v, list) and len(v) == 1:  # sklearn keeps coef_ as [[s]] or [s]
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SnapshotFormatError(f"calibrator: {what} is not a number ({short(v)})")
    return float(v)


def _platt_terms(est: Any, year: int) -> tuple[PlattTerm, ...]:
    a = pickled_attrs(est)
    if {"base_estimator_slope", "calibrator_slope"} <= a.keys():  # onconet MiraiCalibrator
        return (PlattTerm(_num(a["base_estimator_slope"], "slope"),
                          _num(a["base_estimator_offset"], "offset"),
                          _num(a["calibrator_slope"], "slope"),
                          _num(a["calibrator_offset"], "offset")),)
    if class_name(est) == "CalibratedClassifierCV":  # older releases: sklearn itself
        if plain(a.get("method", "sigmoid")) != "sigmoid":
            raise SnapshotFormatError(f"calibrator year {year + 1}: only sigmoid calibration")
        terms = []
        classifiers = a.get("calibrated_classifiers_") or []
        if not isinstance(classifiers, list) or len(classifiers) > _MAX_YEARS:
            raise SnapshotFormatError(f"calibrator year {year + 1}: unexpected structure")
        for cc in classifiers:
            ca = pickled_attrs(cc)
            base = (ca.get("base_estimator") or ca.get("estimator") or a.get("base_estimator")
                    or a.get("estimator"))
            cals = ca.get("calibrators_") or ca.get("calibrators") or []
            if base is None or not isinstance(cals, list) or len(cals) != 1:
                raise SnapshotFormatError(f"calibrator year {year + 1}: unexpected structure")
            ba, pa = pickled_attrs(base), pickled_attrs(cals[0])
            terms.append(PlattTerm(_num(ba.get("coef_"), "coef_"),
                                   _num(ba.get("intercept_"), "intercept_"),
                                   _num(pa.get("a_"), "a_"), _num(pa.get("b_"), "b_")))
        if not terms:
            raise SnapshotFormatError(f"calibrator year {year + 1}: no calibrated classifiers")
        return tuple(terms)
    raise SnapshotFormatError(f"calibrator year {year + 1}: unsupported object "
                              f"{printable(class_name(est) or type(est).__name__)[:80]}")


_MAX_YEARS = 100  # the release has 5; a dict of a million "years" is not a calibrator


def read_calibrator(obj: Any, calibrator_id: str = "") -> MiraiCalibrator:
    """Calibrator pickle ({year index → calibrator}) → MiraiCalibrator with years in order."""
    if not isinstance(obj, dict) or not obj:
        raise SnapshotFormatError("calibrator: expected a dict of per-year calibrators")
    if len(obj) > _MAX_YEARS:
        raise LimitExceeded(f"calibrator: {len(obj):,} years, more than {_MAX_YEARS}")
    with walking("calibrator"):
        return _read_calibrator(obj, calibrator_id)


def _read_calibrator(obj: dict, calibrator_id: str) -> MiraiCalibrator:
    try:
        items = sorted((int(k), v) for k, v in obj.items())
    except (TypeError, ValueError):
        raise SnapshotFormatError("calibrator: keys are not year indices") from None
    if [k for k, _ in items] != list(range(len(items))):
        raise SnapshotFormatError("calibrator: year keys are not 0..n-1")
    return MiraiCalibrator(tuple(_platt_terms(v, k) for k, v in items), calibrator_id)
