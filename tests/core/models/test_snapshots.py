"""Official-snapshot loading: fake release files with the official object structure go through
the restricted unpickler and conversion, and give the same logits as an independent reference
forward over the official module tree. Malicious pickles are refused without running anything.

The stand-in classes below are registered under the official `onconet.*` / `sklearn.*` names only
while the files are written, then removed, so loading cannot resolve them to real code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pickle
import sys
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamview.core.models.converted import load_converted, load_model
from mamview.core.models.errors import ModelUnavailable, SnapshotFormatError, UnsafeSnapshotError
from mamview.core.models.mirai import RISK_FACTORS
from mamview.core.models.official.containers import safe_torch_load
from mamview.core.models.official.inert import InertObject
from mamview.core.models.official.release import (CALIBRATOR_FILES, ENCODER_FILES,
                                                  TRANSFORMER_FILES, convert_release)
from mamview.core.models.official.unpickler import safe_pickle_load
from mamview.core.models.preprocess import PREPROCESSING_VERSION

WIDTHS = (4, 8, 8, 16)  # tiny ResNet-18 layout: 2 BasicBlocks per stage
HIDDEN = 12  # transformer width ≠ image width, so the projection is exercised
H, W = 64, 52

# ----------------------------------------------------------------------------------------------
# Stand-ins with the official attribute structure (spec §6.3). No forward methods: the reference
# forward below walks them by attribute path.


class CustomResnet(nn.Module):
    def __init__(self, args):
        super().__init__()
        self._model = ResNet(args)


class ResNet(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.all_blocks = [["BasicBlock", 2]] * 4
        self.gpu_to_layer_assignments = {}
        self.inplanes = WIDTHS[0]
        self.downsampler = Downsampler()
        prev = WIDTHS[0]
        for stage, width in enumerate(WIDTHS, start=1):
            for j in range(2):
                stride = 2 if (stage > 1 and j == 0) else 1
                setattr(self, f"layer{stage}_{j}", BasicBlock(prev, width, stride))
                prev = width
        self.pool = RiskFactorPool(args, WIDTHS[-1], GlobalMaxPool())
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(WIDTHS[-1] + 100, 2)
        self.prob_of_failure_layer = Cumulative_Probability_Layer(WIDTHS[-1] + 100, args)


class Downsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))
        self.stride = stride


class GlobalMaxPool(nn.Module):
    pass


class GlobalAvgPool(nn.Module):
    pass


class Simple_AttentionPool(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attention_fc = nn.Linear(dim, 1)
        self.softmax = nn.Softmax(dim=-1)


class RiskFactorPool(nn.Module):
    def __init__(self, args, dim, internal):
        super().__init__()
        self.args = args
        self.length_risk_factor_vector = 100
        self.internal_pool = internal
        self.dropout = nn.Dropout(0.1)
        for key, n in RISK_FACTORS:
            setattr(self, f"{key}_fc", nn.Linear(dim, n))


class Cumulative_Probability_Layer(nn.Module):
    def __init__(self, dim, args, max_followup=5):
        super().__init__()
        self.args = args
        self.hazard_fc = nn.Linear(dim, max_followup)
        self.base_hazard_fc = nn.Linear(dim, 1)
        self.relu = nn.ReLU(inplace=True)
        mask = torch.tril(torch.ones(max_followup, max_followup))
        self.upper_triagular_mask = nn.Parameter(torch.t(mask), requires_grad=False)


class AllImageTransformer(nn.Module):
    def __init__(self, args, pool):
        super().__init__()
        self.args = args
        self.kept_images_vec = nn.Parameter(torch.ones(1, 4, 1), requires_grad=False)
        self.projection_layer = nn.Linear(WIDTHS[-1], HIDDEN)
        self.mask_embedding = nn.Embedding(2, WIDTHS[-1], padding_idx=1)
        self.transformer = Transformer(args)
        self.pred_masked_img_fc = nn.Linear(HIDDEN, WIDTHS[-1])
        internal = {"attention": lambda: Simple_AttentionPool(HIDDEN), "max": GlobalMaxPool,
                    "avg": GlobalAvgPool}[pool]()
        self.pool = RiskFactorPool(args, HIDDEN, internal)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(HIDDEN + 100, 2)
        self.prob_of_failure_layer = Cumulative_Probability_Layer(HIDDEN + 100, args)


class Transformer(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.time_embed = nn.Embedding(11, 32, padding_idx=-1)
        self.view_embed = nn.Embedding(3, 32, padding_idx=-1)
        self.side_embed = nn.Embedding(3, 32, padding_idx=-1)
        self.embed_add_fc = nn.Linear(96, HIDDEN)
        self.embed_scale_fc = nn.Linear(96, HIDDEN)
        for i in range(args.num_layers):
            setattr(self, f"transformer_layer_{i}", TransformerLayer(args))


class TransformerLayer(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.multihead_attention = MultiHead_Attention(args)
        self.layernorm_attn = nn.LayerNorm(HIDDEN)
        self.fc1 = nn.Linear(HIDDEN, HIDDEN)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.layernorm_fc = nn.LayerNorm(HIDDEN)


class MultiHead_Attention(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.dim_per_head = HIDDEN // args.num_heads
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.dropout = nn.Dropout(0.1)
        self.aggregate_fc = nn.Linear(HIDDEN, HIDDEN)


class DataParallel(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


class MiraiCalibrator:
    def __init__(self, s, o, a, b):
        self.base_estimator_slope = s
        self.base_estimator_offset = o
        self.calibrator_slope = a
        self.calibrator_offset = b


class LogisticRegression:
    pass


class _SigmoidCalibration:
    pass


class _CalibratedClassifier:
    pass


class CalibratedClassifierCV:
    pass


OFFICIAL_NAMES = {
    CustomResnet: "onconet.models.custom_resnet",
    ResNet: "onconet.models.resnet_base",
    Downsampler: "onconet.models.resnet_base",
    BasicBlock: "onconet.models.blocks.basic_block",
    GlobalMaxPool: "onconet.models.pools.max_pool",
    GlobalAvgPool: "onconet.models.pools.average_pool",
    Simple_AttentionPool: "onconet.models.pools.attention_pool",
    RiskFactorPool: "onconet.models.pools.risk_factor_pool",
    Cumulative_Probability_Layer: "onconet.models.cumulative_probability_layer",
    AllImageTransformer: "onconet.models.hiddens_transfomer",
    Transformer: "onconet.models.hiddens_transfomer",
    TransformerLayer: "onconet.models.hiddens_transfomer",
    MultiHead_Attention: "onconet.models.hiddens_transfomer",
    DataParallel: "torch.nn.parallel.data_parallel",
    MiraiCalibrator: "onconet.models.calibrator",
    LogisticRegression: "sklearn.linear_model._logistic",
    _SigmoidCalibration: "sklearn.calibration",
    _CalibratedClassifier: "sklearn.calibration",
    CalibratedClassifierCV: "sklearn.calibration",
}


@contextlib.contextmanager
def official_names():
    """Make the stand-ins picklable under the official module paths, only inside the block."""
    saved = {}
    for cls, modname in OFFICIAL_NAMES.items():
        parts = modname.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in saved:
                saved[name] = sys.modules.get(name)
                if name != "torch.nn.parallel.data_parallel" and not name.startswith("torch"):
                    sys.modules[name] = types.ModuleType(name)
        cls.__module__, cls.__qualname__ = modname, cls.__name__
    originals = {}
    try:
        for cls, modname in OFFICIAL_NAMES.items():
            mod = sys.modules[modname]
            originals[(modname, cls.__name__)] = getattr(mod, cls.__name__, None)
            setattr(mod, cls.__name__, cls)
        yield
    finally:
        for (modname, name), orig in originals.items():
            if orig is None:
                delattr(sys.modules[modname], name)
            else:
                setattr(sys.modules[modname], name, orig)
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        for cls in OFFICIAL_NAMES:
            cls.__module__, cls.__qualname__ = __name__, cls.__name__


def make_args(num_heads=3, pool="attention"):
    """A Namespace like the pickled training args, with the baggage the spec expects."""
    return argparse.Namespace(
        num_heads=num_heads, num_layers=1, transfomer_hidden_dim=HIDDEN,
        precomputed_hidden_dim=WIDTHS[-1], pool_name={"attention": "Simple_AttentionPool",
                                                      "max": "GlobalMaxPool",
                                                      "avg": "GlobalAvgPool"}[pool],
        risk_factor_keys=[k for k, _ in RISK_FACTORS],
        risk_factor_key_to_num_class={k: n for k, n in RISK_FACTORS}, max_followup=5,
        use_risk_factors=True, pred_risk_factors=True, survival_analysis_setup=True,
        make_probs_indep=False, pred_both_sides=False, num_images=4,
        use_precomputed_hiddens=False, block_layout=[["BasicBlock", 2]] * 4,
        img_size=[1664, 2048], img_mean=[7047.99], img_std=[12005.5], num_chan=3,
        hidden_dim=HIDDEN + 100, img_only_dim=HIDDEN,
        # training-time baggage
        patient_to_partition_dict={"p1": np.int64(0), "p2": np.int64(2)},
        censoring_distribution={"0": np.float64(0.99), "1": np.float64(0.97)},
        exam_to_year_dict={"e1": 2012}, epoch_stats={"train_loss": [0.5, np.float32(0.4)]},
        optimizer_state={"state": {0: {"momentum_buffer": torch.zeros(3)}}},
        some_array=np.arange(6, dtype=np.int16).reshape(2, 3), tags={"a", "b"},
        device=torch.device("cpu"),
    )


def randomise(module: nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics, so no stage is an identity by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "upper_triagular_mask" in name or "kept_images_vec" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.add_(1.0)
    module.eval()


def make_fakes(num_heads=3, pool="attention", seed=0):
    args = make_args(num_heads, pool)
    enc = CustomResnet(args)
    tr = AllImageTransformer(args, pool)
    randomise(enc, seed)
    randomise(tr, seed + 1)
    return enc, tr


CALIB = [(-6.941708811474187, 5.202204577500695), (-6.118981671362509, 4.7190617802843455),
         (-5.4558979486125505, 4.276177460151401), (-5.1194480916336005, 4.218360381892919),
         (-4.776621706974412, 3.904384040341062)]


def mirai_calibrator_dict():
    # Chosen so that α = −(a·o + b), β = −a·s reproduce the spec's table (a = −2, b = 0.5).
    out = {}
    for k, (alpha, beta) in enumerate(CALIB):
        a, b = -2.0, 0.5
        out[k] = MiraiCalibrator(np.float64(beta / 2), np.float64((alpha + b) / 2),
                                 np.float64(a), np.float64(b))
    return out


def sklearn_calibrator_dict():
    out = {}
    for k, (alpha, beta) in enumerate(CALIB):
        base = LogisticRegression()
        base.coef_ = np.array([[beta]])
        base.intercept_ = np.array([alpha])
        sig = _SigmoidCalibration()
        sig.a_, sig.b_ = np.float64(-1.0), np.float64(0.0)
        cc = _CalibratedClassifier()
        cc.base_estimator, cc.calibrators_, cc.classes_ = base, [sig], np.array([0, 1])
        cv = CalibratedClassifierCV()
        cv.base_estimator, cv.method, cv.cv = base, "sigmoid", "prefit"
        cv.calibrated_classifiers_ = [cc]
        out[k] = cv
    return out


def write_release(folder: Path, enc, tr, fmt="legacy", calibrator="mirai", wrap=None,
                  protocol=2) -> Path:
    """Write the three files the way the release does (torch.save of whole modules)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calibrators").mkdir(exist_ok=True)
    with official_names(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy save cannot find the stand-ins' source: fine
        for obj, name in ((enc, ENCODER_FILES[0]), (tr, TRANSFORMER_FILES[0])):
            if wrap == "dataparallel":
                obj = DataParallel(obj)
            elif wrap == "dict":
                obj = {"model": obj, "epoch": 3}
            torch.save(obj, folder / name, _use_new_zipfile_serialization=(fmt == "zip"))
        cal = mirai_calibrator_dict() if calibrator == "mirai" else sklearn_calibrator_dict()
        with open(folder / "calibrators" / CALIBRATOR_FILES[0], "wb") as f:
            pickle.dump(cal, f, protocol=protocol)
    return folder


# ----------------------------------------------------------------------------------------------
# Independent reference forward over the official module tree (spec §4)


def reference_logits(enc, tr, x, view_seq, side_seq, time_seq):
    """Reference Mirai forward written against the official attribute paths.

    x is collated the reference way, [B, C, N, H, W], and transposed back as MiraiFull does.
    """
    b, c, n = x.shape[:3]
    h = x.transpose(1, 2).reshape(b * n, c, *x.shape[3:])
    m = enc._model
    d = m.downsampler
    h = d.maxpool(d.relu(d.bn1(d.conv1(h))))
    for stage in range(1, 5):
        for j in range(2):
            blk = getattr(m, f"layer{stage}_{j}")
            out = blk.relu(blk.bn1(blk.conv1(h)))
            out = blk.bn2(blk.conv2(out))
            h = blk.relu(out + (h if blk.downsample is None else blk.downsample(h)))
    feat = h.flatten(2).max(dim=-1).values  # GlobalMaxPool
    rf = [getattr(m.pool, f"{k}_fc")(feat) for k, _ in RISK_FACTORS]
    rf = torch.cat([torch.sigmoid(r) if r.shape[1] == 1 else F.softmax(r, -1) for r in rf], -1)
    hidden = F.relu(torch.cat([feat, rf], -1))  # encoder's own heads then discarded
    img_x = hidden.view(b, n, -1)[:, :, :WIDTHS[-1]]

    x = img_x * tr.kept_images_vec + tr.mask_embedding(torch.ones(b, n, dtype=torch.long))
    x = tr.projection_layer(x)
    t = tr.transformer
    e = torch.cat([t.view_embed(view_seq), t.time_embed(time_seq), t.side_embed(side_seq)], -1)
    x = t.embed_scale_fc(e) * x + t.embed_add_fc(e)
    layer = t.transformer_layer_0
    mha = layer.multihead_attention
    nh, dph = mha.args.num_heads, mha.dim_per_head
    q = mha.query(x).view(b, n, nh, dph).transpose(1, 2)
    k = mha.key(x).view(b, n, nh, dph).transpose(1, 2)
    v = mha.value(x).view(b, n, nh, dph).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(dph)
    att = torch.matmul(F.softmax(scores, -1), v).transpose(1, 2).reshape(b, n, HIDDEN)
    x = layer.layernorm_attn(mha.aggregate_fc(att) + x)
    x = layer.layernorm_fc(layer.fc2(layer.relu(layer.fc1(x))) + x)

    grid = x.transpose(1, 2).unsqueeze(-1)  # [B, H, N, 1] like the reference pool input
    internal = tr.pool.internal_pool
    flat = grid.flatten(2)  # [B, H, N]
    if isinstance(internal, Simple_AttentionPool):
        a = internal.softmax(internal.attention_fc(flat.transpose(1, 2)).squeeze(-1))
        pooled = (flat * a.unsqueeze(1)).sum(-1)
    elif isinstance(internal, GlobalMaxPool):
        pooled = flat.max(-1).values
    else:
        pooled = flat.mean(-1)
    rf = [getattr(tr.pool, f"{k}_fc")(pooled) for k, _ in RISK_FACTORS]
    rf = torch.cat([torch.sigmoid(r) if r.shape[1] == 1 else F.softmax(r, -1) for r in rf], -1)
    hidden = F.relu(torch.cat([pooled, rf], -1))
    pf = tr.prob_of_failure_layer
    hz = F.relu(pf.hazard_fc(hidden))
    T = hz.shape[1]
    expanded = hz.unsqueeze(-1).expand(b, T, T)
    return (expanded * pf.upper_triagular_mask).sum(1) + pf.base_hazard_fc(hidden)


def exam_inputs(batch=2, seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 3, H, W, generator=g)
    view = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0]][:batch])
    side = torch.tensor([[1, 0, 1, 0], [0, 0, 1, 1]][:batch])
    time = torch.zeros(batch, 4, dtype=torch.long)
    return x, view, side, time


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,pool,heads,wrap", [
    ("legacy", "attention", 3, None),
    ("zip", "attention", 4, "dataparallel"),
    ("legacy", "max", 2, "dict"),
    ("zip", "avg", 6, None),
])
def test_converted_release_matches_reference(tmp_path, fmt, pool, heads, wrap):
    enc, tr = make_fakes(num_heads=heads, pool=pool)
    release = write_release(tmp_path / "release", enc, tr, fmt=fmt, wrap=wrap)
    out = convert_release(release, tmp_path / "models")
    assert out == tmp_path / "models" / "mirai"

    net, calibrator, identity = load_converted(out)
    assert net.config.num_heads == heads  # read from the snapshot, not the default 8
    assert net.config.view_pool == pool
    assert net.config.trunk_widths == WIDTHS and net.config.transformer_hidden_dim == HIDDEN
    x, view, side, time = exam_inputs()
    with torch.no_grad():
        expected = reference_logits(enc, tr, x.transpose(1, 2), view, side, time)
        got = net(x, view, side, time)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert identity.model_id == "mirai" and identity.preprocessing_version == PREPROCESSING_VERSION


def test_converted_folder_layout_and_provenance(tmp_path):
    enc, tr = make_fakes()
    release = write_release(tmp_path / "release", enc, tr)
    out = convert_release(release, tmp_path / "models")
    state = torch.load(out / "weights.pt", weights_only=True)  # a plain state dict
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any(k.startswith(("aggregator.fc.", "aggregator.pred_masked")) for k in state)
    config = json.loads((out / "config.json").read_text())
    src = {s["role"]: s for s in config["provenance"]["sources"]}
    assert set(src) == {"encoder", "transformer", "calibrator"}
    enc_bytes = (release / ENCODER_FILES[0]).read_bytes()
    import hashlib
    assert src["encoder"]["sha256"] == hashlib.sha256(enc_bytes).hexdigest()
    assert src["encoder"]["file"] == ENCODER_FILES[0] and src["encoder"]["format"] == "legacy"
    assert src["encoder"]["matches_published_sha256"] is False
    assert config["provenance"]["converted_at"]
    assert "dim_per_head=4" in config["provenance"]["hyperparameter_evidence"]["num_heads"]
    cal = json.loads((out / "calibrator.json").read_text())
    assert [y["year"] for y in cal["years"]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("kind,protocol", [("mirai", 2), ("mirai", 4), ("sklearn", 2)])
def test_calibrator_pickles(tmp_path, kind, protocol):
    enc, tr = make_fakes()
    release = write_release(tmp_path / "r", enc, tr, calibrator=kind, protocol=protocol)
    _, calibrator, _ = load_converted(convert_release(release, tmp_path / "m"))
    x = np.array([[0.0] * 5, [0.665] * 5])
    want = np.array([[1 / (1 + math.exp(-(a + b * v))) for a, b in CALIB] for v in (0.0, 0.665)])
    np.testing.assert_allclose(calibrator(x), want, rtol=1e-12)


def test_release_zip_and_risk_model(tmp_path):
    enc, tr = make_fakes()
    release = write_release(tmp_path / "release", enc, tr, fmt="zip")
    zpath = tmp_path / "snapshots.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in release.rglob("*"):
            if p.is_file():
                zf.write(p, p.relative_to(release).as_posix())
    out = convert_release(zpath, tmp_path / "models")
    model = load_model(out)
    x, view, side, time = exam_inputs(batch=1)
    from mamview.core.models.base import ExamTensors
    risks = model.predict(ExamTensors(x, view, side, time))
    assert risks.shape == (1, 5) and risks.dtype == np.float64
    assert np.all((risks > 0) & (risks < 1))


def test_missing_files_are_reported(tmp_path):
    (tmp_path / "release").mkdir()
    with pytest.raises(ModelUnavailable, match="lacks encoder, transformer, calibrator"):
        convert_release(tmp_path / "release", tmp_path / "models")
    with pytest.raises(ModelUnavailable, match="lacks config.json"):
        load_converted(tmp_path / "nowhere")


def test_tampered_weights_are_refused(tmp_path):
    enc, tr = make_fakes()
    out = convert_release(write_release(tmp_path / "r", enc, tr), tmp_path / "m")
    state = torch.load(out / "weights.pt", weights_only=True)
    state["aggregator.projection_layer.bias"] += 1
    torch.save(state, out / "weights.pt")
    with pytest.raises(ModelUnavailable, match="hash"):
        load_converted(out)


def test_contradicting_head_count_is_refused(tmp_path):
    enc, tr = make_fakes(num_heads=3)
    tr.args.num_heads = 6  # shared Namespace: dim_per_head (4) now disagrees
    with pytest.raises(SnapshotFormatError, match="contradicts"):
        convert_release(write_release(tmp_path / "r", enc, tr), tmp_path / "m")


# ----------------------------------------------------------------------------------------------
# Safety


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({0: Evil(marker)}, protocol=2)
    with pytest.raises(UnsafeSnapshotError, match=r"'(posix|nt)\.system'"):
        safe_pickle_load(io.BytesIO(data))
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_malicious_torch_file_is_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.p"
    torch.save({"model": Evil(marker)}, path, _use_new_zipfile_serialization=(fmt == "zip"))
    with pytest.raises(UnsafeSnapshotError, match="system"):
        safe_torch_load(path)
    assert not marker.exists()


def test_malicious_release_leaves_nothing_behind(tmp_path):
    marker = tmp_path / "pwned"
    enc, tr = make_fakes()
    tr.args.payload = Evil(marker)  # hidden in the pickled training args
    release = write_release(tmp_path / "r", enc, tr)
    with pytest.raises(UnsafeSnapshotError):
        convert_release(release, tmp_path / "models")
    assert not marker.exists()
    assert not (tmp_path / "models" / "mirai").exists()


@pytest.mark.parametrize("module,name", [
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("__builtin__", "eval"),
    ("subprocess", "Popen"), ("torch", "load"), ("torch.storage", "_load_from_bytes"),
    ("collections", "namedtuple"), ("copyreg", "_reconstructor.__globals__"),
])
def test_dangerous_globals_are_refused(module, name):
    data = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00."
    with pytest.raises(UnsafeSnapshotError, match="allow-list"):
        safe_pickle_load(io.BytesIO(data))


def test_placeholder_namespaces_are_inert(tmp_path):
    """Names under onconet/numpy/torch.nn become recorders: calling them runs nothing."""
    marker = tmp_path / "pwned"
    for module, name, arg in [("onconet.utils", "run", f"touch {marker}"),
                              ("numpy.testing", "runstring", f"open({str(marker)!r}, 'w')"),
                              ("torch.nn.modules.module", "Module", f"touch {marker}")]:
        data = (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
                + pickle.dumps(arg, protocol=2)[2:-1] + b"\x85R.")
        obj = safe_pickle_load(io.BytesIO(data))
        assert isinstance(obj, InertObject) and obj._pickle_args == ((arg,), {})
    assert not marker.exists()


def test_state_cannot_shadow_setstate():
    """A BUILD state trying to plant __setstate__ on a placeholder is dropped."""
    payload = (b"\x80\x02conconet.x\nY\nq\x00)\x81q\x01}q\x02X\x0c\x00\x00\x00__setstate__q\x03"
               b"ccollections\nOrderedDict\nq\x04sb.")
    obj = safe_pickle_load(io.BytesIO(payload))
    assert "__setstate__" not in obj.__dict__


@pytest.mark.parametrize("part,key,want", [
    ("encoder", "_model.downsampler.conv1.weight", "image_encoder.downsampler.conv1.weight"),
    ("encoder", "_model.layer4_0.downsample.1.running_var",
     "image_encoder.layer4_0.downsample.1.running_var"),
    ("encoder", "_model.pool.density_fc.weight", None),
    ("encoder", "_model.prob_of_failure_layer.hazard_fc.bias", None),
    ("transformer", "transformer.transformer_layer_0.multihead_attention.query.weight",
     "aggregator.transformer.transformer_layer_0.multihead_attention.query.weight"),
    ("transformer", "pool.internal_pool.attention_fc.weight",
     "aggregator.pool.internal_pool.attention_fc.weight"),
    ("transformer", "prob_of_failure_layer.upper_triagular_mask",
     "aggregator.prob_of_failure_layer.upper_triagular_mask"),
    ("transformer", "kept_images_vec", None),
    ("transformer", "pred_masked_img_fc.weight", None),
])
def test_official_key_mapping(part, key, want):
    from mamview.core.models.official.readers import map_encoder_key, map_transformer_key
    fn = map_encoder_key if part == "encoder" else map_transformer_key
    assert fn(key) == want


def test_unknown_keys_are_not_silently_dropped():
    from mamview.core.models.official.readers import map_encoder_key, map_transformer_key
    with pytest.raises(SnapshotFormatError):
        map_transformer_key("prob_of_failure_layer_l.hazard_fc.weight")  # pred_both_sides
    with pytest.raises(SnapshotFormatError):
        map_encoder_key("layer1_0.conv1.weight")  # not under _model.


def test_gpu_saved_storage_types_load_on_cpu():
    from mamview.core.models.official.unpickler import RestrictedUnpickler
    u = RestrictedUnpickler(io.BytesIO(b""))
    assert u.find_class("torch.cuda", "FloatStorage").dtype == torch.float32
    assert u.find_class("torch", "HalfStorage").dtype == torch.float16


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_truncated_files_are_format_errors(tmp_path, fmt):
    path = tmp_path / "t.p"
    torch.save({"w": torch.arange(1000.0)}, path, _use_new_zipfile_serialization=(fmt == "zip"))
    data = path.read_bytes()
    assert torch.equal(safe_torch_load(data)["w"], torch.arange(1000.0))
    for cut in (len(data) - 100, len(data) // 2, 10):
        with pytest.raises(SnapshotFormatError):
            safe_torch_load(data[:cut])
