"""The MiraiNet a pair of snapshots describes: its config from what they say (checked against
plausible ranges), the network built under an allocation cap (it must fit the weights the files
hold), and their tensors mapped onto its keys with exact shapes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from mamview.core.errors import LimitExceeded
from mamview.core.models.errors import SnapshotFormatError
from mamview.core.models.mirai import MiraiConfig, MiraiNet
from mamview.core.safety import printable

from .readers import EncoderInfo, TransformerInfo, map_encoder_key, map_transformer_key

# Plausible ranges for the hyper-parameters read from a snapshot, checked before a network of
# that shape is built (the official model: widths 64…512, 2 blocks per stage, 1 layer, 8 heads).
_CONFIG_RANGES = {"width": 8192, "stages": 8, "blocks": 64, "num_chan": 16, "hidden": 16384,
                  "num_heads": 1024, "num_layers": 64, "embed_dim": 4096, "max_time": 100_000,
                  "max_followup": 100, "risk_factors": 64, "classes": 100_000}


def _check_ranges(enc: EncoderInfo, tr: TransformerInfo) -> None:
    r = _CONFIG_RANGES
    checks = [("stages", len(enc.widths)), ("num_chan", enc.num_chan),
              ("hidden", tr.hidden_dim), ("num_heads", tr.num_heads),
              ("num_layers", tr.num_layers), ("embed_dim", tr.embed_dim),
              ("max_time", tr.max_time + 1), ("max_followup", tr.max_followup),
              ("risk_factors", len(tr.risk_factors))]
    checks += [("width", w) for w in enc.widths] + [("blocks", b) for b in enc.blocks]
    checks += [("classes", n) for _, n in tr.risk_factors]
    for name, value in checks:
        if not 1 <= value <= r[name]:
            raise SnapshotFormatError(f"implausible {name} {value:,} read from the snapshots "
                                      f"(expected 1…{r[name]:,})")


def build_config(enc: EncoderInfo, tr: TransformerInfo) -> MiraiConfig:
    """MiraiConfig from what the two snapshots say; preprocessing constants from the spec §3."""
    _check_ranges(enc, tr)
    if enc.widths[-1] != tr.image_dim:
        raise SnapshotFormatError(f"encoder features ({enc.widths[-1]}) do not match the "
                                  f"transformer input ({tr.image_dim})")
    return MiraiConfig(trunk_widths=enc.widths, trunk_blocks=enc.blocks, num_chan=enc.num_chan,
                       transformer_hidden_dim=tr.hidden_dim, num_heads=tr.num_heads,
                       num_layers=tr.num_layers, embed_dim=tr.embed_dim, max_time=tr.max_time,
                       view_pool=tr.view_pool, risk_factors=tr.risk_factors,
                       max_followup=tr.max_followup)


_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
              torch.eye}


def _factory_numel(func: Any, args: tuple, kwargs: dict) -> int:
    """Elements a torch factory call asks for (torch.empty(2, 3), torch.zeros((2, 3)), …)."""
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n", 0)
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
        return int(n) * int(m)
    size = (args[0] if args else kwargs.get("size", ())) if func is torch.full \
        else kwargs.get("size", args)
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = size[0]
    return math.prod(int(s) for s in size)


class _AllocationCap(TorchFunctionMode):
    """While a network whose shape was read from a file is built: refuse tensor creation
    beyond `elements` before it happens (the network must fit the weights the file holds)."""

    def __init__(self, elements: int):
        super().__init__()
        self.left = elements

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in _FACTORIES:
            self.left -= _factory_numel(func, args, kwargs)
            if self.left < 0:
                raise LimitExceeded("the network these snapshots describe is larger than the "
                                    "weights they hold")
        return func(*args, **kwargs)


def build_net(config: MiraiConfig, enc: EncoderInfo, tr: TransformerInfo) -> MiraiNet:
    """MiraiNet(config), allocating at most what the two snapshots' tensors hold (+ slack for
    the counters and the mask that old files lack)."""
    held = sum(t.numel() for info in (enc, tr) for t in info.state.values())
    with _AllocationCap(held + 1_000_000):
        return MiraiNet(config)


def build_state_dict(enc: EncoderInfo, tr: TransformerInfo,
                     template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map both snapshots onto MiraiNet's keys; shapes must match `template` exactly."""
    out: dict[str, torch.Tensor] = {}
    for key, t in enc.state.items():
        new = map_encoder_key(key)
        if new is not None:
            out[new] = t
    for key, t in tr.state.items():
        new = map_transformer_key(key)
        if new is not None:
            out[new] = t
    for key, t in template.items():
        if key not in out and key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(t)  # absent in files written by torch < 0.4.1
        elif key not in out and key.endswith("upper_triagular_mask"):
            out[key] = t.clone()
    missing = sorted(set(template) - set(out))
    extra = sorted(set(out) - set(template))
    if missing or extra:
        raise SnapshotFormatError(f"converted weights do not fit MiraiNet: missing "
                                  f"{printable(missing[:3])[:300]}, unexpected "
                                  f"{printable(extra[:3])[:300]}")
    for key, t in template.items():
        if tuple(out[key].shape) != tuple(t.shape):
            raise SnapshotFormatError(f"{key}: shape {tuple(out[key].shape)[:8]} ≠ expected "
                                      f"{tuple(t.shape)}")
        out[key] = out[key].detach().to(t.dtype).contiguous().clone()
    return out
