"""Smoke runs of the benchmark scripts at toy sizes (the numbers are not checked: performance
belongs in BENCHMARKS.md, not in tests; what is checked is that each script runs the real step
and reports what it says it reports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
MIRROR = "/work/.mirror/OpenGVLab+unmasked_teacher/repo"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def official_checkout(tmp_path_factory):
    """The official code extracted from the local mirror (not part of this repository)."""
    if not os.path.isdir(MIRROR):
        pytest.skip("no local mirror of OpenGVLab/unmasked_teacher on this machine")
    out = tmp_path_factory.mktemp("official")
    archive = subprocess.run(["git", f"--git-dir={MIRROR}", "archive", "HEAD", "single_modality"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return str(out)


def test_stage1_vs_official_runs_both_steps(tmp_path, official_checkout):
    import bench_stage1_vs_official as b

    out = b.main(["--official", official_checkout, "--settings", "tiny", "--steps", "1",
                  "--rounds", "1", "--warmup", "1", "--no-memory", "--threads", "1",
                  "--json", str(tmp_path / "s1.json")])
    r = out["results"][0]
    assert r["ours_clips_per_s"] > 0 and r["official_clips_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["ours_clips_per_s"] / r["official_clips_per_s"])
    assert 0 < r["ours_final_loss"] <= 4  # the UTA l2 loss of unit vectors lies in [0, 4]
    # same student shapes on both sides (the official model has the same parameters)
    assert r["params_student_m"] == pytest.approx(r["params_student_official_m"])
    assert json.loads((tmp_path / "s1.json").read_text())["official_sha256"]


def test_stage2_step_reports_both_media(tmp_path):
    import bench_stage2_step as b

    out = b.main(["--settings", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1",
                  "--threads", "1", "--json", str(tmp_path / "s2.json")])
    rows = {r["media"]: r for r in out["results"]}
    assert rows["video"]["frames"] == 4 and rows["image"]["frames"] == 1
    # an image batch (1 frame, 50% masked) is less work than a 4-frame clip at 80%
    assert 0 < rows["image"]["tflop_per_step"] < rows["video"]["tflop_per_step"]
    assert rows["video"]["mfu"] is None  # CPU


def test_scaling_counts_visible_tokens(tmp_path):
    import bench_scaling as b

    out = b.main(["--width", "tiny", "--points", "1x64", "2x64", "--steps", "1", "--warmup", "1",
                  "--no-memory", "--threads", "1", "--json", str(tmp_path / "sc.json"),
                  "--png", str(tmp_path / "sc.png")])
    rows = out["results"]
    assert [r["visible"] for r in rows] == [16 - int(16 * 0.8), 2 * (16 - int(16 * 0.8))]
    assert rows[1]["gflop_per_clip"] > rows[0]["gflop_per_clip"]
    assert (tmp_path / "sc.png").stat().st_size > 1000


def test_checkpoint_cost_local_and_s3(tmp_path):
    import bench_checkpoint as b

    out = b.main(["--sizes", "tiny", "--repeats", "1", "--json", str(tmp_path / "ck.json")])
    rows = {r["target"].split()[0]: r for r in out["results"]}
    assert set(rows) == {"local", "s3"}
    for r in rows.values():
        # weights + AdamW's two moments, fp32: about 12 bytes per parameter
        assert r["file_gib"] * 2**30 == pytest.approx(12 * r["params_m"] * 1e6, rel=0.1)
        assert r["save_s"]["median"] > 0 and r["load_s"]["median"] > 0


def test_finetune_and_rerank(tmp_path):
    import bench_finetune as b

    out = b.main(["--sizes", "tiny", "--frames", "1", "--attention", "sdpa", "explicit",
                  "--videos", "4", "--texts", "3", "--k", "2", "--steps", "1", "--warmup", "1",
                  "--threads", "1", "--json", str(tmp_path / "ft.json")])
    assert [r["attention"] for r in out["results"]] == ["sdpa", "explicit"]
    assert all(r["ms"] > 0 for r in out["results"])
    assert out["rerank"]["pairs"] == (4 + 3) * 2
    assert 0 < out["rerank"]["kv_share_of_fusion_flops"] < 1


def test_data_path_measures_the_wait(tmp_path):
    import bench_data_path as b

    out = b.main(["--datasets", "synthetic", "--workers", "0", "--steps", "4", "--log-every", "2",
                  "--synthetic-videos", "8", "--threads", "1", "--json", str(tmp_path / "dp.json")])
    r = out["results"][0]
    assert r["workers"] == 0 and 0 <= r["data_wait_frac"] <= 1 and r["step_time_s"] > 0
    assert out["decode_clips_per_core_s"]["synthetic"] > 0


def test_compile_bench_plumbing(tmp_path):
    import bench_compile as b

    # eager only: the compile strategies take minutes on a CPU (see BENCHMARKS.md)
    out = b.main(["--setting", "tiny", "--batch", "2", "--strategies", "eager", "--steps", "1",
                  "--warmup", "1", "--threads", "1", "--json", str(tmp_path / "c.json")])
    r = out["results"][0]
    assert r["video_ms"] > 0 and r["image_ms"] > 0


def test_sigterm_flag_cost_is_timed_between_two_ranks(tmp_path):
    out = tmp_path / "flag.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", os.path.join(ROOT, "benchmarks", "bench_sigterm_flag.py"),
                    "--calls", "20", "--warmup", "2", "--json", str(out)],
                   check=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = json.loads(out.read_text())["result"]
    assert (r["world_size"], r["calls"], r["device"]) == (2, 20, "cpu")
    assert 0 < r["median_us"] <= r["p90_us"]
def test_shard_parts_bench_runs_parts_and_projects(tmp_path):
    import bench_shard_parts as b

    out = b.main(["--videos", "1", "--repeat", "1", "--rounds", "1", "--rows", "2000",
                  "--out", str(tmp_path), "--plot", str(tmp_path / "plot.png")])
    assert [(r["parts"], r["mode"], r["videos"], r.get("warmup", False)) for r in out["runs"]] == [
        (1, "transcode", 1, True), (1, "decode", 1, False), (1, "transcode", 1, False),
        (2, "transcode", 2, False), (1, "transcode", 1, False)]
    assert all(r["cpu_s"] > 0 for r in out["runs"]) and len(out["ratio_2_vs_1"]) == 1
    assert out["per_core"]["bigbuckbunny.mp4:transcode"]["videos_per_core_hour"] > 0
    assert out["manifest"]["rows"] == 2000
    assert {r["dataset"] for r in out["projection"]} == {"K710", "WebVid-10M"}
    assert (tmp_path / "plot.png").stat().st_size > 0
