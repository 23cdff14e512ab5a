"""MiraiNet stages against hand-computed cases (spec §4) and the view-order invariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamview.core.models.base import ExamTensors
from mamview.core.models.identity import ModelIdentity
from mamview.core.models.mirai import (
    RISK_FACTORS, ConditionedTransformer, CumulativeProbabilityLayer, MiraiCalibrator,
    MiraiConfig, MiraiNet, MiraiRiskModel, MultiHeadAttention, RiskFactorPool)
from mamview.core.models.preprocess import PREPROCESSING_VERSION

TINY = dict(trunk_widths=(4, 8, 8, 16), transformer_hidden_dim=12, num_heads=3,
            input_height=64, input_width=52)


def random_net(seed=0, **overrides) -> MiraiNet:
    torch.manual_seed(seed)
    net = MiraiNet(MiraiConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_risk_factor_table_matches_spec():
    assert len(RISK_FACTORS) == 34 and sum(n for _, n in RISK_FACTORS) == 100
    assert sum(n == 1 for _, n in RISK_FACTORS) == 20
    offsets, pos = {}, 0
    for key, n in RISK_FACTORS:
        offsets[key] = (pos, pos + n - 1)
        pos += n
    assert offsets["density"] == (0, 3) and offsets["age"] == (8, 13)
    assert offsets["prior_hist"] == (30, 30) and offsets["race"] == (31, 43)
    assert offsets["brca"] == (71, 74) and offsets["mom_bc_cancer_history"] == (75, 75)
    assert offsets["sister_oc_cancer_history"] == (86, 86)
    assert offsets["hrt_years_ago_stopped"] == (95, 99)


def test_config_json_round_trip_and_validation():
    cfg = MiraiConfig(**TINY, view_pool="max")
    assert MiraiConfig.from_json(cfg.to_json()) == cfg
    assert cfg.hidden_dim == 112 and MiraiConfig().hidden_dim == 612
    with pytest.raises(ValueError):
        MiraiConfig(view_pool="median")
    with pytest.raises(ValueError):
        MiraiConfig(num_heads=7)
    with pytest.raises(ValueError, match="unknown"):
        MiraiConfig.from_dict({"trunk_width": [1]})


def test_hazard_layer_hand_computed():
    layer = CumulativeProbabilityLayer(3, 5)
    with torch.no_grad():
        layer.hazard_fc.weight.zero_()
        # after ReLU the hazards are 0.5, 0, 0.25, 0, 2
        layer.hazard_fc.bias.copy_(torch.tensor([0.5, -1.0, 0.25, 0.0, 2.0]))
        layer.base_hazard_fc.weight.zero_()
        layer.base_hazard_fc.bias.fill_(-3.0)
    out = layer(torch.randn(2, 3))
    want = torch.tensor([-2.5, -2.5, -2.25, -2.25, -0.25]).expand(2, 5)
    torch.testing.assert_close(out, want)
    assert torch.equal(layer.upper_triagular_mask, torch.triu(torch.ones(5, 5)))
    assert torch.all(torch.diff(torch.sigmoid(out), dim=1) >= 0)  # cumulative: never decreases


def test_embedding_order_is_view_time_side():
    cfg = MiraiConfig(**{**TINY, "transformer_hidden_dim": 96, "num_heads": 1, "num_layers": 0})
    t = ConditionedTransformer(cfg)
    with torch.no_grad():
        t.embed_scale_fc.weight.zero_()
        t.embed_scale_fc.bias.zero_()
        t.embed_add_fc.weight.copy_(torch.eye(96))
        t.embed_add_fc.bias.zero_()
    view, side = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[1, 1, 0, 0]])
    time = torch.zeros(1, 4, dtype=torch.long)
    out = t(torch.randn(1, 4, 96), view, side, time)
    for n in range(4):
        torch.testing.assert_close(out[0, n, :32], t.view_embed.weight[view[0, n]])
        torch.testing.assert_close(out[0, n, 32:64], t.time_embed.weight[0])
        torch.testing.assert_close(out[0, n, 64:], t.side_embed.weight[side[0, n]])


def test_padding_rows_follow_the_reference():
    cfg = MiraiConfig(**TINY)
    t = ConditionedTransformer(cfg)
    assert t.time_embed.padding_idx == 10 and t.view_embed.padding_idx == 2
    assert t.side_embed.padding_idx == 2
    assert torch.all(MiraiNet(cfg).aggregator.mask_embedding.weight[1] == 0)


def test_multihead_attention_matches_torch():
    torch.manual_seed(1)
    mine = MultiHeadAttention(12, 3)
    ref = nn.MultiheadAttention(12, 3, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mine.query.weight, mine.key.weight, mine.value.weight]))
        ref.in_proj_bias.copy_(torch.cat([mine.query.bias, mine.key.bias, mine.value.bias]))
        ref.out_proj.weight.copy_(mine.aggregate_fc.weight)
        ref.out_proj.bias.copy_(mine.aggregate_fc.bias)
    x = torch.randn(2, 4, 12)
    torch.testing.assert_close(mine(x), ref(x, x, x, need_weights=False)[0])


def test_risk_factor_pool_activations():
    pool = RiskFactorPool(MiraiConfig(**TINY))
    pooled, rf, weights = pool(torch.randn(3, 4, 12))
    assert rf.shape == (3, 100) and weights.shape == (3, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    pos = 0
    for key, n in RISK_FACTORS:
        seg = rf[:, pos:pos + n]
        logit = getattr(pool, f"{key}_fc")(pooled)
        want = torch.sigmoid(logit) if n == 1 else F.softmax(logit, -1)
        torch.testing.assert_close(seg, want)
        pos += n


def test_image_features_are_global_max_pool():
    net = random_net()
    x = torch.randn(2, 4, 3, 64, 52)
    fmap = net.image_encoder.feature_map(x.flatten(0, 1))
    assert fmap.shape == (8, 16, 2, 2)  # 32× downsampling
    torch.testing.assert_close(net.image_features(x), fmap.amax((-2, -1)).view(2, 4, 16))


def test_mask_embedding_row_one_is_added():
    net = random_net()
    feats = torch.randn(1, 4, 16)
    v, s, t = torch.tensor([[0, 0, 1, 1]]), torch.tensor([[1, 0, 1, 0]]), torch.zeros(1, 4).long()
    row = net.aggregator.mask_embedding.weight[1].detach().clone()
    with torch.no_grad():
        with_row = net.aggregator(feats, v, s, t)
        net.aggregator.mask_embedding.weight[1].zero_()
        shifted = net.aggregator(feats + row, v, s, t)
    torch.testing.assert_close(with_row, shifted)


@pytest.mark.parametrize("pool", ["attention", "max", "avg"])
def test_forward_is_invariant_to_view_order(pool):
    net = random_net(view_pool=pool)
    torch.manual_seed(2)
    x = torch.randn(1, 4, 3, 64, 52)
    view, side = torch.tensor([[0, 0, 1, 1]]), torch.tensor([[1, 0, 1, 0]])
    with torch.inference_mode():
        base = net(x, view, side)
        for perm in itertools.permutations(range(4)):
            p = list(perm)
            torch.testing.assert_close(net(x[:, p], view[:, p], side[:, p]), base,
                                       rtol=1e-5, atol=1e-5)
        # Not vacuous: the codes matter, so a wrong permutation of codes changes the result.
        assert not torch.allclose(net(x, view, 1 - side), base, atol=1e-4)


def test_forward_batch_matches_single_exams():
    net = random_net()
    x = torch.randn(3, 4, 3, 64, 52)
    view = torch.tensor([[0, 0, 1, 1]] * 3)
    side = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]])
    with torch.inference_mode():
        batched = net(x, view, side)
        single = torch.cat([net(x[i:i + 1], view[i:i + 1], side[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_channels_last_gives_the_same_logits():
    net = random_net()
    x = torch.randn(1, 4, 3, 64, 52)
    v, s = torch.tensor([[0, 0, 1, 1]]), torch.tensor([[1, 0, 1, 0]])
    with torch.inference_mode():
        base = net(x, v, s)
        net = net.to(memory_format=torch.channels_last)
        torch.testing.assert_close(net(x, v, s), base, rtol=1e-4, atol=1e-4)


def _identity():
    return ModelIdentity("demo", "tiny", "0", "x" * 64, "cal", "y" * 64, PREPROCESSING_VERSION,
                         False, "demo model — synthetic training data — not for clinical use")


def test_risk_model_scores_an_exam_from_arrays():
    net = random_net()
    calibrator = MiraiCalibrator.from_alpha_beta([(-6.9, 5.2), (-6.1, 4.7), (-5.5, 4.3),
                                                  (-5.1, 4.2), (-4.8, 3.9)])
    model = MiraiRiskModel(net, calibrator, _identity())
    rng = np.random.default_rng(0)
    views = [(rng.integers(0, 4096, (100, 80)).astype(np.uint16), s, v)
             for s, v in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))]
    risks = model.score_exam(views)
    assert risks.shape == (5,) and risks.dtype == np.float64
    batch = model.preprocess(views)
    probs = torch.sigmoid(model.logits(batch)).numpy()
    np.testing.assert_allclose(model.predict(batch)[0], calibrator(probs)[0])
    both = ExamTensors.collate([batch, batch])
    np.testing.assert_allclose(model.predict(both), np.vstack([risks, risks]), rtol=1e-6)
