"""`umt eval action` end to end on real shards: multi-view views merged per video (checked
against a hand computation), the files it writes, zero-shot classification from a tiny Stage-2
checkpoint, and 2 processes == 1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from umt.cli import app
from umt.data.action_loader import build_action_eval_loader
from umt.models import create_model

TINY = dict(num_frames=4, img_size=64, embed_dim=96, depth=4, num_heads=3)


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    """A tiny 4-class classifier in our checkpoint layout, with a head that is far from
    uniform (so the per-view probabilities, and their merge, differ visibly)."""
    torch.manual_seed(0)
    model = create_model("umt_vit_tiny_patch16_224", num_classes=4, **TINY)
    with torch.no_grad():
        model.head.weight.normal_(0, 3.0)
    path = tmp_path_factory.mktemp("ckpt") / "ft.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path), model.eval()


def evaluate(*args):
    r = CliRunner().invoke(app, ["eval", "action", "--config", "tiny", *args])
    assert r.exit_code == 0, r.output
    return r


def test_multiview_eval_merges_views_per_video_and_writes_its_files(tmp_path, synthetic_shards, classifier_ckpt):
    ckpt, model = classifier_ckpt
    out = tmp_path / "eval"
    evaluate("--model", ckpt, "--data", synthetic_shards, "--output", str(out), "model.num_frames=4",
             "eval.num_clips=2", "eval.num_crops=3", "eval.batch_size=5", "data.num_workers=2")
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "classifier" and m["num_videos"] == 24 and m["num_views"] == 24 * 6
    assert m["protocol"]["clips"] == 2 and m["protocol"]["crops"] == 3 and m["protocol"]["frames"] == 4
    assert m["protocol"]["sampler"] == "segment" and m["split"] == "test"
    assert np.array(m["confusion_matrix"]).sum() == 24 and m["class_names"][0] == "left to right"

    # by hand: every view through the model, softmax per view, mean per video
    probs, labels = {}, {}
    with torch.no_grad():
        for b in build_action_eval_loader(synthetic_shards, batch_size=4, num_frames=4, img_size=64,
                                          num_clips=2, num_crops=3):
            logits = model(b["video"].flatten(0, 1)).double().view(len(b["id"]), 6, 4)
            for i, vid in enumerate(b["id"]):
                probs[vid] = logits[i].softmax(-1).mean(0).numpy()
                labels[vid] = int(b["label"][i])
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in preds) == sorted(probs)  # every video once
    for p in preds:
        expected = probs[p["id"]]
        assert p["label"] == labels[p["id"]] and p["top"][0] == int(expected.argmax())
        np.testing.assert_allclose(p["top_scores"], np.sort(expected)[::-1], atol=1e-5)
        assert p["top_names"][0] == m["class_names"][p["top"][0]]
    top1 = 100 * np.mean([probs[v].argmax() == labels[v] for v in probs])
    assert m["top1"] == pytest.approx(top1) and m["top5"] == 100.0  # 4 classes
    per_class = [np.mean([probs[v].argmax() == c for v in probs if labels[v] == c]) * 100 for c in range(4)]
    assert m["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    # merging matters: the single-view numbers of the same model differ from the 6-view ones
    single = tmp_path / "single"
    evaluate("--model", ckpt, "--data", synthetic_shards, "--output", str(single), "model.num_frames=4",
             "eval.num_clips=1", "eval.num_crops=1")
    s = json.loads((single / "metrics.json").read_text())
    assert s["num_views"] == 24 and s["loss"] != pytest.approx(m["loss"])

    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm["matrix"] == m["confusion_matrix"] and cm["class_names"] == m["class_names"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "eval-action" and summary["metrics"]["top1"] == m["top1"]
    assert "num_clips: 2" in (out / "config.yaml").read_text()


def test_eval_refuses_a_checkpoint_without_a_fitting_head(tmp_path, synthetic_shards):
    student = create_model("umt_pretrain_vit_tiny_patch16_224", align_layers=2, teacher_dim=32, **TINY)
    torch.save({"model": student.state_dict()}, tmp_path / "s1.pt")
    r = CliRunner().invoke(app, ["eval", "action", "--config", "tiny", "--model", str(tmp_path / "s1.pt"),
                                 "--data", synthetic_shards, "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "has no classifier head" in r.output
    r = CliRunner().invoke(app, ["eval", "action", "--config", "tiny", "--model", str(tmp_path / "s1.pt"),
                                 "--data", synthetic_shards, "--output", str(tmp_path / "o"), "eval.templates=[x]"])
    assert r.exit_code == 2 and "must contain exactly one '{}'" in r.output


@pytest.fixture(scope="module")
def stage2_ckpt(tiny_stage2):
    return tiny_stage2["checkpoint"]


def test_zero_shot_from_a_stage2_checkpoint(tmp_path, synthetic_shards, stage2_ckpt):
    from umt.eval.zero_shot import load_vl_model
    from umt.losses import similarity
    from umt.models.text import tokenize

    names = ["moving left to right", "moving right to left", "jumping to the right", "jumping to the left"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "zs"
    evaluate("--zero-shot", "--classes", str(tmp_path / "names.txt"), "--model", stage2_ckpt,
             "--data", synthetic_shards, "--output", str(out), "model.num_frames=4",
             "eval.num_clips=1", "eval.num_crops=1", "eval.templates=['a video of {}.','{}']")
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "zero_shot" and m["prompt_names"] == names and m["num_videos"] == 24
    assert m["templates"] == ["a video of {}.", "{}"] and m["class_names"][0] == "left to right"
    assert m["text_encoder"] == "sentence-transformers/all-MiniLM-L6-v2"  # from the checkpoint's config

    # by hand: template-averaged text features, per-frame cosine averaged over frames / temp
    model, tok, _ = load_vl_model(stage2_ckpt, size_name="umt_vit_tiny_patch16_224", num_frames=4, img_size=64)
    model.eval()
    with torch.no_grad():
        texts = [t for n in names for t in (f"a video of {n}", n)]
        ids, att = tokenize(tok, texts, 32)
        feat = model.encode_text(ids, att)[1].view(4, 2, -1).mean(1)
        feat = torch.nn.functional.normalize(feat, dim=-1)
        b = next(iter(build_action_eval_loader(synthetic_shards, batch_size=3, num_frames=4, img_size=64)))
        _, vfeat = model.encode_video(b["video"][:, 0], per_frame=True)
        expected = similarity(vfeat, feat, model.temp.clamp(0.001, 0.5)).double().softmax(-1)
    preds = {p["id"]: p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    for i, vid in enumerate(b["id"]):
        np.testing.assert_allclose(preds[vid]["top_scores"], expected[i].sort(descending=True).values, atol=1e-5)
    # a Stage-1 (video-only) checkpoint cannot classify zero-shot
    student = create_model("umt_pretrain_vit_tiny_patch16_224", align_layers=2, teacher_dim=32, **TINY)
    torch.save({"model": student.state_dict()}, tmp_path / "s1.pt")
    r = CliRunner().invoke(app, ["eval", "action", "--config", "tiny", "--zero-shot", "--model",
                                 str(tmp_path / "s1.pt"), "--data", synthetic_shards, "--output", str(tmp_path / "x")])
    assert r.exit_code == 2 and "needs a Stage-2 (vision-language) checkpoint" in r.output


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                    "-m", "umt.eval.action_job", *args], check=True, env=env, timeout=600)


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tmp_path, synthetic_shards, classifier_ckpt):
    from umt.eval.action_job import main

    args = [f"model.pretrained={classifier_ckpt[0]}", f"data.source={synthetic_shards}",
            "model.num_frames=4", "eval.num_clips=2", "eval.num_crops=3", "data.num_workers=2"]
    _torchrun(2, "--config", "tiny", *args, f"train.output_dir={tmp_path / 'two'}")
    main("tiny", [*args, f"train.output_dir={tmp_path / 'one'}"])  # the reference, in this process
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_videos"] == two["num_videos"] == 24 and one["num_views"] == two["num_views"] == 144
    for k in ("top1", "top5", "mean_class_accuracy", "confusion_matrix"):
        assert one[k] == two[k], k
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-9)
    p1 = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    p2 = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(a)["id"] for a in p1] == [json.loads(b)["id"] for b in p2]
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(json.loads(a)["top_scores"], json.loads(b)["top_scores"], atol=1e-6)
