"""The run report: content, energy arithmetic, self-containedness, and what a real headless
browser shows when the page is loaded the way the KFP UI loads it (sandboxed iframe srcdoc)."""

from __future__ import annotations

import base64
import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from umt.report import Report, Step, energy, figures, render_html, render_markdown
from umt.report.figures import LOSS_COLOUR
from umt.report.model import AT_CHANCE, LEARNED, assess, bar_groups, verdict_rule
from umt.report.render import lineage, verdict_lines

CKPT1, CKPT2, CKPT_A = "s3://b/runs/stage1-aa/ck.pt", "s3://b/runs/stage2-bb/ck.pt", "s3://b/a.pt"


def sample_report() -> Report:
    history = [{"step": s, "loss": 2.0 / s} for s in range(1, 21)]
    steps = [
        Step("Data", "", "data", metadata={"num_samples": 32.0, "num_shards": 4.0,
                                           "num_failed": 1.0}),
        Step("Stage 1", "stage1", "train", metadata={
            "checkpoint": CKPT1, "parent": "", "step": 20, "architecture": "umt_vit_b",
            "num_frames": 8, "resolution": 224, "config_hash": "aa", "nodes": 4,
            "gpus_per_node": 8}, metrics={"final_loss": 0.1, "wall_hours": 2.0, "gpu_hours": 64.0}, history=history),
        Step("Stage 2", "stage2", "train", metadata={
            "checkpoint": CKPT2, "parent": CKPT1, "step": 10, "nodes": 2, "gpus_per_node": 8,
            "energy_kwh_measured": 5.0}, metrics={"final_loss": 0.5, "wall_hours": 1.0, "gpu_hours": 16.0},
            history=history[:10]),
        Step("Fine-tune: action", "finetune-action", "train", metadata={
            "checkpoint": CKPT_A, "parent": CKPT1, "step": 5, "nodes": 1, "gpus_per_node": 8},
            metrics={"final_loss": 0.9, "gpu_hours": 2.0}),
        Step("Evaluate: action", "eval-action", "eval", metadata={
            "model": CKPT_A, "nodes": 1, "gpus_per_node": 8},
            metrics={"top1": 71.5, "top5": 90.25, "num_videos": 32.0, "num_views": 384.0,
                     "gpu_hours": 0.5},
            details={"top1": 71.5, "num_classes": 4, "num_videos": 32, "num_views": 384}),
        # Retrieval at chance (32 videos: chance 3.125 %), with the Stage-2 model.
        Step("Evaluate: retrieval", "eval-retrieval", "eval", metadata={"model": CKPT2},
             metrics={"t2v_r1": 6.25, "t2v_r5": 15.6, "v2t_r1": 0.0, "r_mean": 12.0},
             details={"num_videos": 32, "num_texts": 32}),
        Step("Fine-tune: qa", "finetune-qa", "train", "skipped", reason="run_qa=false"),
    ]
    return Report("UMT test run", steps, dataset={"name": "data: k400", "num_samples": 32},
                  confusion={"matrix": [[5, 1, 0], [2, 3, 1], [0, 0, 6]],
                             "class_names": ["a", "b", "c"]},
                  gpu_power_watts=400.0, grid_g_per_kwh=500.0)


def test_energy_is_measured_when_reported_else_gpus_times_time_times_power():
    rep = sample_report()
    s1, s2 = rep.steps[1], rep.steps[2]
    e1 = energy(s1, 400.0, 500.0)
    assert (e1.gpu_hours, e1.energy_kwh, e1.co2_kg, e1.measured) == (64.0, 25.6, 12.8, False)
    e2 = energy(s2, 400.0, 500.0)
    assert (e2.energy_kwh, e2.co2_kg, e2.measured) == (5.0, 2.5, True)


def test_lineage_follows_parents_from_the_data():
    chains = lineage(sample_report())
    assert ["data: k400", "Stage 1", "Fine-tune: action", "Evaluate: action"] in chains
    assert ["data: k400", "Stage 1", "Stage 2", "Evaluate: retrieval"] in chains
    assert not any("Fine-tune: qa" in c for c in chains)  # skipped


def test_markdown_has_results_lineage_energy_and_models():
    md = render_markdown(sample_report())
    assert "| Stage 1 | done | step 20, final loss 0.1000 |" in md
    assert "| Fine-tune: qa | skipped | run_qa=false |" in md
    assert "data: k400 → Stage 1 → Fine-tune: action → Evaluate: action" in md
    assert "top1 71.5 %" in md and "(counts: num_videos 32, num_views 384" in md
    # 64 GPU-h x 0.4 kW = 25.6 kWh -> 12.8 kg at 500 g/kWh; stage 2 measured 5 kWh
    assert "| Stage 1 | 4 × 8 | 2.000 | 64.000 | 25.600 | 12.800 | estimate |" in md
    assert "| Stage 2 | 2 × 8 | 1.000 | 16.000 | 5.000 | 2.500 | NVML |" in md
    assert f"`{CKPT1}`" in md


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_html_is_self_contained():
    page = render_html(sample_report())
    # every src/href is inline data: the KFP UI's sandboxed iframe srcdoc loads nothing else
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:"), attr
    assert "<script" not in page and "<link" not in page and "url(" not in page
    pictures = _images(page)
    assert len(pictures) == 4  # loss curves, evaluation bars, confusion matrix, energy bars
    for png in pictures:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.size[0] > 200
    assert html.escape(CKPT1) in page and "Confusion matrix" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _pixels_of(png: Path, colour: str) -> int:
    """How many pixels of the screenshot are (nearly) ``colour``."""
    import numpy as np

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).sum(axis=-1) < 40).sum())


def _screenshot(page: str, folder: Path, attempts: int = 8) -> Path:
    """Headless chromium's screenshot of ``page`` inside a KFP-UI-like sandboxed iframe.

    Headless chromium sometimes shoots before it painted the srcdoc iframe at all (an entirely
    white image, seen in about a third of the runs here); such a shot says nothing about the
    page, so it is retaken. A page whose images fail still paints its text: not retried.
    """
    import numpy as np

    host, shot = folder / "host.html", folder / "shot.png"
    host.write_text('<!DOCTYPE html><html><body style="margin:0">'
                    f'<iframe sandbox="allow-scripts" srcdoc="{html.escape(page, quote=True)}" '
                    'style="border:0;width:1200px;height:1500px"></iframe></body></html>')
    for _ in range(attempts):
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--window-size=1200,1500",
                        f"--user-data-dir={folder / 'profile'}", f"--screenshot={shot}",
                        host.as_uri()], check=True, capture_output=True, timeout=120)
        with Image.open(shot) as im:
            if (np.asarray(im.convert("L")) < 200).any():
                return shot
    raise AssertionError(f"chromium painted nothing in {attempts} attempts")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed "
                                             "(apt-get install -y chromium)")
def test_html_renders_in_a_sandboxed_iframe_like_the_kfp_ui(tmp_path):
    """Load the report the way the KFP UI does (``<iframe srcdoc sandbox="allow-scripts">``) in
    headless chromium and check the screenshot shows the loss curve (its colour), i.e. the
    inline images loaded."""
    page = render_html(sample_report())
    near = _pixels_of(_screenshot(page, tmp_path), LOSS_COLOUR)
    assert near > 200, f"the loss curve is not visible in the screenshot ({near} pixels)"
    # Control: the same page without its images shows no such pixels.
    blank = re.sub(r"<img [^>]+>", "", page)
    assert _pixels_of(_screenshot(blank, tmp_path), LOSS_COLOUR) < 50


# -- at a glance: chance, the paper's number, verdicts, percentage-only bars --------------------
def test_each_headline_sits_beside_its_chance_level_and_the_papers_number():
    rep = sample_report()
    action, retrieval = (assess(s) for s in rep.steps if s.kind == "eval")
    # chance from the evaluation's own counts: 100 / 4 classes, 100 / 32 videos
    assert (action.metric, action.value, action.chance) == ("top1", 71.5, 25.0)
    assert action.chance_basis == "100 / 4 classes"
    assert (action.paper, action.paper_what) == (90.6, "K400 top-1, ViT-L/16")
    assert (retrieval.metric, retrieval.chance, retrieval.paper) == ("t2v_r1", 3.125, 58.8)
    md = render_markdown(rep)
    assert ("| Evaluate: action | top1 | 71.50 % | 25 % (100 / 4 classes) | 37.5 % | "
            "learned | 90.6 % (K400 top-1, ViT-L/16) |") in md
    assert "| Evaluate: retrieval | t2v_r1 | 6.25 % | 3.12 % (100 / 32 videos)" in md
    assert "paper's full-size model (not ours)" in md and "not this run's model" in md
    assert "| Evaluate: action | done | top1 71.50 % (chance 25 %): learned |" in md
    page = render_html(rep)
    assert "At a glance" in page and "not ours" in page and "90.6 %" in page
    assert html.escape(verdict_rule()) in page  # the legend states the rule


def test_verdicts_learned_above_chance_and_at_chance_otherwise():
    rep = sample_report()
    assert verdict_lines(rep) == [
        "Evaluate: action: learned (top1 71.50 % vs chance 25 %)",
        "Evaluate: retrieval: at chance (t2v_r1 6.25 % vs chance 3.12 %)"]
    # the rule: chance + max(10 points, 0.5 x chance)
    at = dict(metrics={"accuracy": 0.0}, details={"num_answers": 8})
    assert assess(Step("qa", "eval-qa", "eval", **at)).verdict == AT_CHANCE
    for value, verdict in ((22.4, AT_CHANCE), (22.5, LEARNED), (90.0, LEARNED)):
        step = Step("qa", "eval-qa", "eval", metrics={"accuracy": value},
                    details={"num_answers": 8})  # chance 12.5, learned from 22.5
        assert assess(step).verdict == verdict, value
    # AVA has no count: the evaluation's own random-score mAP is its chance
    ava = assess(Step("ava", "eval-ava", "eval", metrics={"mAP": 9.0, "random_mAP": 4.0}))
    assert (ava.chance, ava.verdict, ava.paper) == (4.0, AT_CHANCE, 39.8)
    none = assess(Step("mc", "eval-mc", "eval", metrics={"accuracy": 50.0}))
    assert none.chance is None and none.verdict == "no chance level"


def test_bar_charts_plot_percentages_only_with_chance_per_bar(monkeypatch):
    rep = sample_report()
    groups = bar_groups(rep.steps)
    assert [g.name for g in groups] == ["Evaluate: action", "Evaluate: retrieval"]
    action, retrieval = groups
    assert action.values == {"top1": 71.5, "top5": 90.25}  # num_videos, num_views: not here
    assert action.chance == {"top1": 25.0, "top5": 100.0}  # top-5 of 4 classes: always right
    assert action.paper == {"top1": 90.6}
    assert retrieval.chance["t2v_r5"] == 15.625 and retrieval.chance["r_mean"] == pytest.approx(100 / 6)
    # what is drawn: bars of those values only, on a 0-100 axis, a chance line on each bar
    drawn = []
    monkeypatch.setattr(figures, "png_bytes", lambda fig: drawn.append(fig) or b"png")
    assert figures.metric_bars(groups) == b"png"
    axes = drawn[0].axes
    heights = [[p.get_height() for p in ax.patches] for ax in axes]
    assert heights == [[71.5, 90.25], [6.25, 15.6, 0.0, 12.0]]
    assert all(ax.get_ylim() == (0.0, 100.0) and ax.get_ylabel() == "percent" for ax in axes)
    chance_lines = [c for c in axes[0].collections if c.get_label() == "chance"]
    assert sorted(seg[0][1] for seg in chance_lines[0].get_segments()) == [25.0, 100.0]
    figures.pyplot().close("all")


def test_breakdowns_of_a_headline_metric_are_percentages_too():
    qa = Step("Evaluate: video QA", "eval-qa", "eval", metrics={
        "accuracy": 40.0, "accuracy_colour": 60.0, "accuracy_direction": 20.0,
        "num_questions": 64.0, "gpu_hours": 0.0}, details={"num_answers": 8})
    (group,) = bar_groups([qa])
    assert group.values == {"accuracy": 40.0, "accuracy_colour": 60.0, "accuracy_direction": 20.0}
    assert set(group.chance.values()) == {12.5} and group.paper == {"accuracy": 47.1}


def test_counts_are_text_not_bars():
    page = render_html(sample_report())
    assert "<th>count</th>" in page and "<td>num_views</td><td>384</td>" in page


def test_a_curve_with_few_points_says_so():
    rep = sample_report()
    rep.steps[3].history = [{"step": 10, "loss": 1.386}, {"step": 20, "loss": 1.393},
                            {"step": 20, "eval/top1": 25.0}]
    md = render_markdown(rep)
    assert ("Fine-tune: action: 2 logged loss points, too few to show a trend" in md)
    assert "Stage 1: 20 logged loss points" in md
    assert figures.curve_title("x", 2).endswith("too few for a trend")


def test_the_recipe_and_data_are_named():
    rep = sample_report()
    rep.dataset.update(num_classes=4, classes=["left_to_right", "right_to_left"],
                       source="/w/synthetic/manifest.jsonl")
    rep.steps[1].plan = {"config": "tiny", "overrides": ["train.steps=20",
                                                                "data.source=/x.json"]}
    md = render_markdown(rep)
    assert ("Data: 32 clips, 4 classes (left_to_right, right_to_left), from "
            "/w/synthetic/manifest.jsonl.") in md
    assert "| Stage 1 | tiny | train.steps=20 | 20 | umt_vit_b | 8 | 224 |" in md


class _Artifact:
    def __init__(self, path, metadata=None):
        self.path, self.metadata = str(path), metadata or {}


def test_the_report_step_reads_counts_from_each_evaluations_metrics_json(tmp_path):
    """The pipeline's report step, on fabricated step outputs: the chance level comes from the
    evaluation's metrics.json (num_classes is not among its Metrics), every logged loss point of
    metrics.jsonl is read, the recipe from the plan."""
    import json

    from umt.pipeline import steps

    ft, ev = tmp_path / "ft", tmp_path / "ev"
    ft.mkdir()
    ev.mkdir()
    (ft / "pipeline-step.json").write_text(json.dumps({
        "model": {"checkpoint": "ck.pt", "step": 20, "architecture": "umt_vit_tiny"},
        "metrics": {"final_loss": 0.3}}))
    (ft / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 2 * i, "loss": 1.0 / i}) + "\n" for i in range(1, 11)))
    (ev / "pipeline-step.json").write_text(json.dumps({
        "model": "ck.pt", "metrics": {"top1": 25.0, "top5": 100.0, "num_views": 384.0}}))
    (ev / "metrics.json").write_text(json.dumps({
        "top1": 25.0, "num_classes": 4, "num_videos": 32, "confusion_matrix": [[1]]}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"steps": {
        "finetune-action": {"output_dir": str(ft), "config": "tiny",
                            "overrides": ["train.steps=20", "train.log_every=2"]},
        "eval-action": {"output_dir": str(ev), "config": "tiny",
                        "overrides": []}}, "skipped": {}, "provided": {}}))
    md, page = _Artifact(tmp_path / "r.md"), _Artifact(tmp_path / "r.html")
    steps.report(plan=_Artifact(plan), dataset=_Artifact(tmp_path / "d", {
        "dataset_json": "/o/datasets/demo/dataset.json", "num_samples": 32.0,
        "num_classes": 4.0, "classes": ["a", "b", "c", "d"]}), title="t",
        gpu_power_watts=400.0, grid_g_per_kwh=400.0, markdown=md, html=page)
    text = Path(md.path).read_text()
    assert "| Evaluate: action recognition | top1 | 25.00 % | 25 % (100 / 4 classes)" in text
    assert "| at chance | 90.6 % (K400 top-1, ViT-L/16) |" in text
    assert "Fine-tune: action recognition: 10 logged loss points" in text
    assert ("| Fine-tune: action recognition | tiny | train.steps=20 "
            "train.log_every=2 | 20 | umt_vit_tiny |") in text
    assert "Data: 32 clips, 4 classes (a, b, c, d)." in text
