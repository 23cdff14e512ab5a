"""`mamview bench infer`: the Mirai architecture at native resolution.

Measures, per exam: the full MiraiNet forward, a bare ResNet-18 trunk on the same four images
(written independently below, torchvision-style), their ratio (the overhead of our code on top
of the unavoidable convolutions) and the preprocessing of four native-size mammograms.
Weights are random: timing does not depend on them. `mamview bench infer` runs :func:`measure`
(CPU, and the GPU where there is one); `python -m mamview.bench.infer` prints one device's runs
as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from mamview.bench.format import machine_line
from mamview.core.models.base import ViewImage
from mamview.core.models.device import describe_device, select_device
from mamview.core.models.mirai import MiraiConfig, MiraiNet
from mamview.core.models.preprocess import preprocess_exam

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _bare_resnet18_trunk() -> nn.Module:
    """A plain ResNet-18 feature extractor (stem + 4 stages + global max pool), no Mirai code."""

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout))
            self.short = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.short(x))

    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time(fns: Sequence[Callable[[], Any]], device: torch.device, repeats: int) -> list[float]:
    """Median wall time of each function over `repeats` rounds, after one warm-up round.

    Calls are interleaved (a, b, a, b, …) so that load from other processes and thermal drift
    affect every function alike, which keeps their ratio meaningful on a shared machine.
    """
    for fn in fns:
        fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            out.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _synthetic_views(shape: tuple[int, int], seed: int = 0) -> list[ViewImage]:
    """Four 12-bit native-size images with a breast-like bright region on alternating sides."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    views = []
    for i, (side, view) in enumerate((("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))):
        cx = 0 if i % 2 == 0 else w
        tissue = np.exp(-(((xx - cx) / (0.6 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2))
        noise = rng.integers(0, 200, size=(h, w))
        views.append(ViewImage((tissue * 3500 + noise).astype(np.uint16), side, view))
    return views


def bench_infer(device: str = "cpu", height: int = 2048, width: int = 1664,
                batch_sizes: Sequence[int] = (1,), dtypes: Sequence[str] = ("fp32",),
                repeats: int = 2, native_shape: tuple[int, int] = (3328, 2560),
                channels_last: bool | None = None) -> list[dict[str, Any]]:
    """Seconds per exam for the full forward, a bare ResNet-18 trunk and preprocessing.

    Uses torch.inference_mode, channels_last (default on CUDA and CPU, where oneDNN runs this
    network ~1.4× faster with it) and autocast for bf16/fp16. Full forward and trunk are timed
    interleaved. Returns one dict per (batch size, dtype).
    """
    dev = select_device(device)
    if channels_last is None:
        channels_last = dev.type in ("cuda", "cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    net = MiraiNet(MiraiConfig(input_height=height, input_width=width)).eval()
    bare = _bare_resnet18_trunk().eval()
    net = net.to(dev, memory_format=fmt)
    bare = bare.to(dev, memory_format=fmt)

    views = _synthetic_views(native_shape)
    (pre_s,) = _time([lambda: preprocess_exam(views, height, width)], torch.device("cpu"),
                     max(1, repeats))

    results = []
    for dtype_name in dtypes:
        amp = _DTYPES[dtype_name]
        for b in batch_sizes:
            x = torch.randn(b, 4, 3, height, width, device=dev)
            view = torch.tensor([[0, 0, 1, 1]] * b, device=dev)
            side = torch.tensor([[1, 0, 1, 0]] * b, device=dev)
            flat = x.reshape(b * 4, 3, height, width).contiguous(memory_format=fmt)

            def full() -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(dev.type, dtype=amp,
                                                            enabled=amp is not None):
                    return net(x, view, side)

            def trunk() -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(dev.type, dtype=amp,
                                                            enabled=amp is not None):
                    return bare(flat)

            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            full_s, trunk_s = _time([full, trunk], dev, repeats)
            results.append({
                "device": describe_device(dev), "batch": b, "dtype": dtype_name,
                "height": height, "width": width, "channels_last": channels_last,
                "full_s_per_exam": full_s / b, "trunk_s_per_exam": trunk_s / b,
                "overhead_ratio": full_s / trunk_s,
                "preprocess_s_per_exam": pre_s, "native_shape": list(native_shape),
                "peak_gpu_mib": (torch.cuda.max_memory_allocated(dev) / 2**20
                                 if dev.type == "cuda" else None),
                "torch": torch.__version__, "repeats": repeats,
            })
    return results


def measure(height: int = 2048, width: int = 1664, batches: Sequence[int] | None = None,
            repeats: int = 2) -> dict[str, Any]:
    """Mirai forward at native resolution: CPU fp32, plus fp32/bf16 on a GPU when there is one."""
    runs = bench_infer("cpu", height, width, batch_sizes=batches or [1], dtypes=("fp32",),
                       repeats=repeats)
    if torch.cuda.is_available():
        runs += bench_infer("cuda", height, width, batch_sizes=batches or [1, 8, 32],
                            dtypes=("fp32", "bf16"), repeats=max(repeats, 3))
    return {"benchmark": "infer", "machine": machine_line(), "runs": runs}


def rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures of :func:`measure` as (label, value) rows (the machine row aside)."""
    out = []
    for r in fig["runs"]:
        out.append((f"{r['device']} batch {r['batch']} {r['dtype']}",
                    f"{r['full_s_per_exam']:.3f} s/exam ({1 / r['full_s_per_exam']:.1f} "
                    f"exams/s), trunk {r['trunk_s_per_exam']:.3f} s, overhead ratio "
                    f"{r['overhead_ratio']:.2f} (target ≤ 1.3)"))
    if fig["runs"]:
        out.append(("preprocessing (4 views, CPU)",
                    f"{fig['runs'][0]['preprocess_s_per_exam']:.3f} s/exam"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mamview.bench.infer`: one device's runs as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int, default=2048)
    p.add_argument("--width", type=int, default=1664)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--dtype", nargs="+", default=["fp32"], choices=sorted(_DTYPES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    out = bench_infer(a.device, a.height, a.width, a.batch, a.dtype, a.repeats,
                      channels_last=a.channels_last)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
