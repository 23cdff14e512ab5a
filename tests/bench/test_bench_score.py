"""`mamview bench score` (issue 15): the pipeline's exams/s through the real command line, the
per-configuration device runner on the CPU, and the JPEG 2000 reduced-decode comparison."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mamview.bench import score
from mamview.core.ingest import drain, run_import
from mamview.core.models.base import round_risks
from mamview.core.models.mirai import MiraiRiskModel
from mamview.core.models.preprocess import preprocess_exam
from mamview.core.paths import Library, resources_dir

needs_demo_model = pytest.mark.skipif(
    not (resources_dir() / "demo_model" / "weights.pt").is_file(),
    reason="the demo weights are not bundled in this build")


def narrow_mirai() -> MiraiRiskModel:
    net, cal, ident = score.random_mirai(score.mirai_config("small"))
    return MiraiRiskModel(net, cal, ident, "cpu")


@needs_demo_model
def test_bench_score_command_reports_cpu_rates_and_the_j2k_comparison(tmp_path):
    work, out = tmp_path / "work", tmp_path / "fig.json"
    # the archive a --work folder keeps is reused as it is: made here with small images so
    # the command runs in seconds (the figures say which size they measured)
    score.make_archive(work, 3, "small")
    run = subprocess.run([sys.executable, "-m", "mamview", "--home", str(tmp_path / "home"),
                          "bench", "score", "--model", "demo", "--exams", "3",
                          "--work", str(work), "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["benchmark"] == "score" and fig["archive"]["size"] == "small"
    assert fig["archive"]["exams"] == 3 and set(fig["models"]) == {"demo"}
    demo = fig["models"]["demo"]
    runs = demo["cpu"]["runs"]
    assert [r["decode_workers"] for r in runs] == [0, 1, 2]  # the old path, then the pipeline
    assert demo["cpu"]["identical_risks"] is True
    for r in runs:  # every exam computed (fresh library each), none refused
        assert r["computed"] == 3 and r["cached"] == 0 and not r["unscorable"]
        assert r["exams_per_s"] > 0 and r["device"].startswith("CPU")
    assert demo["cpu"]["ratio"] == pytest.approx(runs[2]["exams_per_s"] / runs[1]["exams_per_s"],
                                                 rel=0.01)
    assert all(r["first_result_s"] > 0 for r in runs)
    # three exams fit one batch of four: no rate "after the first score" is claimed
    assert all(r["steady_exams_per_s"] is None for r in runs)
    assert demo["model_only"]["exams"] == 3 and demo["model_only"]["exams_per_s"] > 0
    assert demo["serial"]["reduced_decode_min_height"] == 512  # the demo model's own decode
    assert demo["serial"]["decode_s_per_exam"] > 0
    assert sum(demo["cpu"]["shares"]["shares"].values()) == pytest.approx(1, abs=0.01)
    assert ("cuda" in demo) == torch.cuda.is_available()
    j2k = fig["j2k_reduced"]
    assert j2k["target"] == "320×256" and j2k["views"] == 1 and j2k["risks"] is None
    assert j2k["load_full_s_per_image"] > 0 and j2k["load_reduced_s_per_image"] > 0
    assert j2k["tensor_max_abs_diff"] >= j2k["tensor_mean_abs_diff"] >= 0
    assert j2k["verdict"]
    text = run.stdout
    assert "mamview bench score" in text and "demo: ratio 2 vs 1 decode workers" in text
    assert "J2K verdict" in text


def test_one_device_configuration_runs_on_the_cpu():
    net = narrow_mirai().net
    rng = np.random.default_rng(0)
    views = [(rng.integers(0, 4096, (400, 320)).astype(np.uint16), s, v)
             for s, v in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))]
    cfg = net.config
    sample = preprocess_exam(views, cfg.input_height, cfg.input_width)
    for batch in (1, 2):  # batch 2 cycles the one sample exam
        r = score.run_config(net, sample, "cpu", batch=batch, repeats=2)
        assert "error" not in r and r["batch"] == batch and r["dtype"] == "fp32"
        assert r["compute_s_per_exam"] > 0 and r["copy_s_per_exam"] >= 0
        assert r["model_only_exams_per_s"] > 0 and "peak_gpu_mib" not in r
    # the CPU scores in fp32 without CUDA graphs: asking otherwise is an error, not a no-op
    with pytest.raises(ValueError):
        score.run_config(net, sample, "cpu", dtype="bf16")
    with pytest.raises(ValueError):
        score.run_config(net, sample, "cpu", graphs=True)
    configs = score.cuda_configs()
    assert {(c["batch"], c["dtype"]) for c in configs if not (c["compile"] or c["graphs"])} == {
        (b, d) for b in (1, 8, 32, 64) for d in ("fp32", "bf16")}
    assert {(c["compile"], c["graphs"]) for c in configs} == {
        (False, False), (False, True), (True, False), (True, True)}


def test_random_mirai_scores_end_to_end_from_the_scratch_home(tmp_path):
    fig = score.measure("mirai", 2, work=str(tmp_path), size="small", cuda=False)
    mirai = fig["models"]["mirai"]
    assert [r["computed"] for r in mirai["cpu"]["runs"]] == [2, 2, 2]
    assert mirai["cpu"]["identical_risks"] is True
    assert mirai["serial"]["reduced_decode_min_height"] is None  # Mirai decodes in full
    assert (tmp_path / "home" / "models" / "mirai-random-small" / "weights.pt").is_file()
    labels = [label for label, _ in score.rows(fig)]
    assert "mirai: CPU model-only" in labels and "J2K Year 1..5 risks full / reduced" in labels

    # the J2K comparison went through the same random-weight Mirai, on four views
    j2k = fig["j2k_reduced"]
    assert j2k["target"] == "320×256" and j2k["views"] == 4
    assert "640×512 lossless JPEG 2000" in j2k["image"]
    assert j2k["tensor_max_abs_diff"] >= j2k["tensor_mean_abs_diff"] > 0  # not one decode
    assert j2k["grey_max_abs_diff"] == pytest.approx(j2k["tensor_max_abs_diff"] * 12005.5,
                                                     abs=0.01)
    r = j2k["risks"]
    for risks in (r["full"], r["reduced"]):
        assert len(risks) == 5 and all(0 < x < 1 for x in risks)
        assert list(round_risks(np.array(risks))) == risks  # rounded to the stored precision
    assert r["identical_4dp"] == (r["full"] == r["reduced"])
    assert r["max_abs_diff"] == pytest.approx(max(abs(a - b) for a, b in
                                                  zip(r["full"], r["reduced"])), abs=1e-9)
    assert j2k["verdict"].startswith(("keep the full decode", "reduced decode acceptable"))


@needs_demo_model
def test_the_device_section_runs_on_the_cpu(tmp_path):
    # the code behind the CUDA figures, on the CPU: fp32 configurations, shares, end to end
    archive = score.make_archive(tmp_path, 2, "small")
    folders = [tmp_path / f for f in archive["folders"]]
    lib = Library(tmp_path / "lib")
    drain(run_import(lib, folders, make_previews=False))
    entry = score.demo_entry(tmp_path / "home")
    serial = score.serial_pass(lib.home, entry)
    assert serial["figures"]["exams"] == 2 and len(serial["tensors"]) == 2
    configs = [{"batch": b, "dtype": "fp32", "compile": False, "graphs": False} for b in (1, 2)]
    fig = score.cuda_section(tmp_path / "libs", entry, folders, serial["model"],
                             serial["tensors"], serial["figures"], configs, device="cpu",
                             batch_size=2)
    assert fig["device"].startswith("CPU") and [r["batch"] for r in fig["configs"]] == [1, 2]
    for r in fig["configs"]:
        assert set(r["shares"]) == {"decode", "copy", "compute"}
        assert sum(r["shares"].values()) == pytest.approx(1, abs=0.01)
    e2e = fig["end_to_end"]
    assert e2e["computed"] == 2 and e2e["batch_size"] == 2 and e2e["exams_per_s"] > 0
    assert e2e["bottleneck"] and all(v > 0 for v in e2e["stage_exams_per_s"].values())
    assert "compute (fp32, batch 2)" in e2e["stage_exams_per_s"]


def test_j2k_comparison_needs_a_model_reading_one_level_down(tmp_path):
    net, cal, ident = score.random_mirai(score.mirai_config("full"))
    with pytest.raises(ValueError, match="not one level apart"):
        score.j2k_reduced(tmp_path, "small", MiraiRiskModel(net, cal, ident, "cpu"))
