"""Retrieval fine-tuning (umt train finetune-retrieval) and multiple choice (umt eval mc) on
CPU: per-frame features, the 12-frame position table, VTC ids by video or caption, evaluation
with a best checkpoint and last/best reporting, the official optimizer, bad input; MC scores
against a hand computation, samples without candidates, 2 processes == 1."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from umt.cli import app
from umt.models import create_model
from umt.models.text import MINILM

TINY = dict(img_size=64, embed_dim=96, depth=4, num_heads=3, align_layers=2, text_encoder=MINILM,
            fusion_layer=4, proj_dim=64, teacher_dim=32)


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory):
    """A tiny Stage-2 model's weights at 4 frames (the official pretraining frame count)."""
    torch.manual_seed(0)
    model = create_model("umt_vl_tiny_patch16_224", num_frames=4, **TINY)
    path = tmp_path_factory.mktemp("s2") / "stage2.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_twelve_frames_extend_the_sinusoid_table_and_load_a_four_frame_checkpoint(stage2_ckpt):
    from umt.models.pos_embed import sinusoid_table

    m12 = create_model("umt_vl_tiny_patch16_224", pretrained=stage2_ckpt, num_frames=12, **TINY)
    m4 = create_model("umt_vl_tiny_patch16_224", pretrained=stage2_ckpt, num_frames=4, **TINY)
    t12, t4 = m12.vision_encoder.encoder.pos_embed, m4.vision_encoder.encoder.pos_embed
    # official multi-modality ckpt_num_frame=-1: the 1-D table over t*HW + hw, longer
    assert t12.shape == (1, 12 * 16, 96) and torch.equal(t12, sinusoid_table(12 * 16, 96))
    assert torch.equal(t12[:, :4 * 16], t4)
    assert torch.equal(m12.vision_encoder.encoder.blocks[0].attn.qkv.weight,
                       m4.vision_encoder.encoder.blocks[0].attn.qkv.weight)


def test_per_frame_features_and_match_ids(stage2_ckpt):
    from umt.models.text import load_tokenizer, tokenize
    from umt.train.finetune_retrieval import match_ids

    model = create_model("umt_vl_tiny_patch16_224", pretrained=stage2_ckpt, num_frames=12, **TINY).eval()
    ids, att = tokenize(load_tokenizer(MINILM), ["a red square", "a blue square"], 16)
    video = torch.randn(2, 3, 12, 64, 64)
    out = model(video, ids, att, torch.tensor([0, 1]), uta=False, vtm=True, per_frame=True)
    assert out.video_feat.shape == (2, 12, 64)
    torch.testing.assert_close(out.video_feat.norm(dim=-1), torch.ones(2, 12))
    _, feat = model.encode_video(video, per_frame=True)  # the evaluation's features
    torch.testing.assert_close(out.video_feat, feat)
    with pytest.raises(ValueError, match="per_frame features need every token"):
        model.forward_vision(video, mask=torch.zeros(2, 12 * 16, dtype=torch.bool), per_frame=True)
    batch = {"key": ["v1", "v1", "v2"], "caption": ["a b", "c", "a b"]}
    by_video, by_caption = match_ids(batch, "video"), match_ids(batch, "caption")
    assert by_video[0] == by_video[1] != by_video[2]
    assert by_caption[0] == by_caption[2] != by_caption[1]


def test_mean_text_pooling_tells_minilm_captions_apart():
    """MiniLM's [CLS] output is the same vector for every caption (it is a mean-pooling
    sentence encoder), so the tiny presets pool the text feature over the tokens."""
    import torch.nn.functional as F

    from umt.models.text import load_tokenizer, tokenize

    caps = ["a blue square moving left to right", "a yellow square moving right to left in jumps"]
    ids, att = tokenize(load_tokenizer(MINILM), caps, 16)
    torch.manual_seed(0)
    cls = create_model("umt_vl_tiny_patch16_224", num_frames=4, **TINY).eval()
    mean = create_model("umt_vl_tiny_patch16_224", num_frames=4, text_pool="mean", **TINY).eval()
    mean.load_state_dict(cls.state_dict())
    with torch.no_grad():
        hidden, f_cls = cls.encode_text(ids, att)
        _, f_mean = mean.encode_text(ids, att)
    assert F.cosine_similarity(hidden[0, 0], hidden[1, 0], dim=0) > 0.9999
    assert float(f_mean[0] @ f_mean[1]) < float(f_cls[0] @ f_cls[1]) - 0.01
    pooled = (hidden * att[..., None]).sum(1) / att.sum(1, keepdim=True)
    torch.testing.assert_close(f_mean, F.normalize(mean.text_proj(pooled), dim=-1))
    with pytest.raises(ValueError, match="text_pool"):
        create_model("umt_vl_tiny_patch16_224", num_frames=4, text_pool="max", **TINY)


def test_official_optimizer_settings_and_groups(stage2_ckpt):
    from umt.configs.finetune_retrieval import FinetuneRetrievalConfig
    from umt.configs.loader import load_config
    from umt.train import stage2
    from umt.train.finetune_retrieval import build_models

    cfg = load_config(FinetuneRetrievalConfig, "finetune-retrieval", "b16",
                      ["model.pretrained=x", "data.sources=[a]"])
    o = cfg.optim
    assert (o.base_lr, o.weight_decay, o.betas, o.layer_decay, o.lr_scaling) == \
        (1e-5, 0.02, [0.9, 0.999], None, "none")
    assert (o.min_lr, o.warmup_lr) == (1e-7, 1e-7)  # official lr * max(0.01, ...)
    assert (cfg.model.num_frames, cfg.eval.num_frames, cfg.eval.k) == (12, 12, 128)
    cfg = load_config(FinetuneRetrievalConfig, "finetune-retrieval", "tiny", [f"model.pretrained={stage2_ckpt}"])
    model = build_models(cfg, torch.device("cpu")).model
    groups = stage2.param_groups(cfg, model)
    decay = {id(p) for p in groups[0]["params"]}
    assert id(model.temp) in decay and id(model.vision_proj.weight) in decay
    assert id(model.vision_proj.bias) not in decay
    # no UTA, no MLM: their parameters are frozen (DDP needs every trained one used)
    assert not any(p.requires_grad for p in model.vision_encoder.clip_decoder.parameters())
    assert not model.text_encoder.cls.predictions.transform.dense.weight.requires_grad
    assert model.itm_head.weight.requires_grad and model.text_encoder.bert.encoder.layer[5].output.dense.weight.requires_grad


def test_finetune_retrieval_trains_evaluates_and_keeps_the_best(tmp_path, stage2_ckpt, synthetic_shards):
    from umt.train.finetune_retrieval import main

    before = torch.load(stage2_ckpt)["model"]
    summary = main("tiny", [f"model.pretrained={stage2_ckpt}", f"data.sources=[{synthetic_shards}]",
                            "data.match_by=caption", f"eval.source={synthetic_shards}",
                            "eval.match_by=caption", "train.steps=2", "train.eval_every=1",
                            "train.best_metric=r_mean", "train.log_every=1",
                            f"train.output_dir={tmp_path}"])
    evals = [r for r in records(tmp_path) if "eval/r_mean" in r]
    assert [e["step"] for e in evals] == [1, 2]
    # 24 videos with 16 possible class-level captions: each distinct caption is one query
    assert evals[0]["eval/num_videos"] == 24 and evals[0]["eval/num_texts"] <= 16
    assert summary["eval"]["r_mean"] == evals[-1]["eval/r_mean"]  # the last checkpoint's
    assert summary["best"]["metric"] == "r_mean" and summary["best"]["value"] == max(
        e["eval/r_mean"] for e in evals)
    assert "selected on that set" in summary["selection_note"]
    assert (tmp_path / "checkpoints" / "best.pt").exists()
    losses = [r for r in records(tmp_path) if "loss_vtc" in r]
    assert {"loss_vtm", "temp", "vtm_rows_skipped"} <= set(losses[0])
    trained = torch.load(summary["checkpoint"])["model"]
    for k in ("vision_encoder.clip_decoder.0.head.weight", "text_encoder.cls.predictions.transform.dense.weight"):
        assert torch.equal(trained[k], before[k]), k  # frozen: no loss uses them
    assert not torch.equal(trained["itm_head.weight"], before["itm_head.weight"])
    # the fine-tuned checkpoint is a Stage-2-layout model: umt eval retrieval reads it
    create_model("umt_vl_tiny_patch16_224", pretrained=summary["checkpoint"], num_frames=12, **TINY)


def test_retrieval_data_without_captions_fails_before_training(tmp_path, synthetic_manifest):
    import csv

    from umt.data.shard import shard_dataset
    from umt.train.finetune_retrieval import main

    rows = list(csv.DictReader(open(synthetic_manifest)))[:4]
    folder = Path(synthetic_manifest).parent
    manifest = tmp_path / "nocap.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "label"])
        w.writeheader()
        w.writerows({"video": str(folder / r["video"]), "label": r["label"]} for r in rows)
    info = shard_dataset(str(manifest), str(tmp_path / "shards"), workers=1, progress=False)
    with pytest.raises(ValueError, match="holds no captions"):
        main("tiny", [f"data.sources=[{info.location}]", f"train.output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- multiple choice
@pytest.fixture(scope="module")
def mc_shards(tmp_path_factory):
    from umt.data.shard import shard_dataset
    from umt.data.synthetic_tasks import write_task_dataset

    root = tmp_path_factory.mktemp("mc")
    manifest = write_task_dataset(str(root / "videos"), 8, "mc", num_frames=16)
    return shard_dataset(manifest, str(root / "shards"), samples_per_shard=3, workers=1,
                         progress=False).location


def test_umt_eval_mc_scores_as_officially(tmp_path, stage2_ckpt, mc_shards):
    import torch.nn.functional as F

    from umt.data.captions import clean_caption
    from umt.data.retrieval_loader import build_retrieval_loader
    from umt.models.text import load_tokenizer, tokenize

    out = tmp_path / "mc"
    r = CliRunner().invoke(app, ["eval", "mc", "--config", "tiny", "--model", stage2_ckpt,
                                 "--data", mc_shards, "--output", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_questions"] == 8 and m["num_candidates"] == 5 and m["chance"] == pytest.approx(20.0)
    assert m["protocol"]["frames"] == 12 and m["protocol"]["itm_weight"] == 0.7
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and m["accuracy"] == pytest.approx(100 * sum(p["correct"] for p in preds) / 8)
    assert json.loads((out / "summary.json").read_text())["metrics"]["accuracy"] == m["accuracy"]
    # by hand, for the first video: 0.7 softmax(ITM)[1] + 0.3 softmax_k(mean_t cos / temp); the
    # tiny preset's text feature is the mean over tokens (MiniLM, see docs/downstream.md)
    model = create_model("umt_vl_tiny_patch16_224", pretrained=stage2_ckpt, num_frames=12,
                         text_pool="mean", **TINY).eval()
    batch = next(iter(build_retrieval_loader(mc_shards, batch_size=1, num_frames=12, img_size=64)))
    p = next(p for p in preds if p["key"] == batch["key"][0])
    with torch.no_grad():
        tokens, vfeat = model.encode_video(batch["video"], per_frame=True)
        ids, att = tokenize(load_tokenizer(MINILM), [clean_caption(c) for c in p["candidates"]], 32)
        hidden, tfeat = model.encode_text(ids, att)
        itm = model.itm_logits(tokens.expand(5, -1, -1), hidden, att)
        cos = torch.stack([(vfeat[0] @ tfeat[k]).mean() for k in range(5)])
        score = 0.7 * F.softmax(itm, -1)[:, 1] + 0.3 * F.softmax(cos / model.temp, -1)
    assert p["scores"] == pytest.approx(score.tolist(), abs=1e-5)
    assert p["prediction"] == int(score.argmax())


def test_umt_eval_mc_names_samples_without_candidates(tmp_path, stage2_ckpt, synthetic_shards):
    r = CliRunner().invoke(app, ["eval", "mc", "--config", "tiny", "--model", stage2_ckpt,
                                 "--data", synthetic_shards, "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no 'candidates'" in r.output and "24 multiple-choice samples" in r.output


@pytest.mark.slow
def test_eval_mc_two_processes_agree_with_one(tmp_path, stage2_ckpt, mc_shards):
    from test_stage2 import _torchrun  # tests/ is on sys.path (rootdir conftest)

    from umt.eval.mc_job import main as evaluate

    args = [f"model.pretrained={stage2_ckpt}", f"data.source={mc_shards}",
            "eval.num_workers=2", "eval.batch_size=2"]
    _torchrun(2, "umt.eval.mc_job", "--config", "tiny", *args, f"train.output_dir={tmp_path / 'two'}")
    evaluate("tiny", [*args, f"train.output_dir={tmp_path / 'one'}"])  # the reference, in this process
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_questions"] == two["num_questions"] == 8
    assert one["accuracy"] == two["accuracy"]
    p1 = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    p2 = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    for a, b in zip(p1, p2):
        a, b = json.loads(a), json.loads(b)
        assert a["key"] == b["key"] and a["scores"] == pytest.approx(b["scores"], abs=1e-5)
