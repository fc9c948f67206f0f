"""Stage 2 end to end on CPU (tiny preset: the Stage-1 tiny video encoder + the real MiniLM
BERT): losses fall, each loss is logged per media type, resume == uninterrupted, 2 processes
== 1, Stage-1 initialisation, zero-weight losses, zero-shot retrieval during training and as
``umt eval retrieval``."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from umt.cli import app
from umt.runtime import checkpoint
from umt.train.stage2 import main


def run(out, *overrides):
    return main("tiny", [f"train.output_dir={out}", "train.log_every=1", *overrides])


def weights(out):
    return checkpoint.load_latest(str(out))["model"]


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_stage2_learns_and_logs_every_loss(tmp_path):
    summary = run(tmp_path, "train.steps=8", "train.ckpt_every=8", "optim.warmup_steps=2")
    recs = [r for r in records(tmp_path) if "loss" in r]
    losses = [r["loss"] for r in recs]
    assert len(losses) == 8 and sum(losses[-2:]) < 0.85 * sum(losses[:2]), losses
    keys = set().union(*recs)
    for loss in ("vtc", "vtm", "mlm", "uta"):
        assert f"loss_{loss}" in keys and f"video/loss_{loss}" in keys and f"image/loss_{loss}" in keys
    assert {"temp", "vtm_rows_skipped", "lr", "clips_per_s"} <= keys
    # its checkpoint loads through create_model, strictly
    from umt.models import create_model

    model = create_model("umt_vl_tiny_patch16_224", pretrained=summary["checkpoint"], num_frames=4,
                         img_size=64, embed_dim=96, depth=4, num_heads=3, align_layers=2,
                         text_encoder="sentence-transformers/all-MiniLM-L6-v2", fusion_layer=4,
                         proj_dim=64, teacher_dim=32)
    trained = weights(tmp_path)
    assert torch.equal(model.itm_head.weight, trained["itm_head.weight"])
    assert torch.equal(model.temp.detach(), trained["temp"])


def test_stage2_resume_equals_uninterrupted(tmp_path):
    common = ["train.steps=2", "train.ckpt_every=1", "train.batch_size=4"]
    run(tmp_path / "a", *common)
    run(tmp_path / "b", *common, "train.stop_at=1")
    run(tmp_path / "b", *common)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_stage2_starts_from_a_stage1_checkpoint(tiny_stage1):
    from umt.configs.loader import load_config
    from umt.configs.stage2 import Stage2Config
    from umt.train.stage2 import build_models

    s1 = tiny_stage1
    cfg = load_config(Stage2Config, "stage2", "tiny", [f"model.pretrained={s1['checkpoint']}"])
    model = build_models(cfg, torch.device("cpu")).model
    s1w = checkpoint.load(s1["checkpoint"])["model"]
    assert torch.equal(model.vision_encoder.encoder.blocks[3].mlp.fc2.weight, s1w["encoder.blocks.3.mlp.fc2.weight"])
    assert torch.equal(model.vision_encoder.clip_decoder[1].head.weight, s1w["clip_decoder.1.head.weight"])


def test_a_zero_weight_loss_trains_nothing_of_its_own(tmp_path):
    from umt.configs.loader import load_config
    from umt.configs.stage2 import Stage2Config
    from umt.train.stage2 import build_models

    cfg = load_config(Stage2Config, "stage2", "tiny", ["loss.vtm=0", "loss.mlm=0"])
    model = build_models(cfg, torch.device("cpu")).model
    assert not model.itm_head.weight.requires_grad
    assert not model.text_encoder.cls.predictions.transform.dense.weight.requires_grad
    fusion = model.text_encoder.bert.encoder.layer[model.text_encoder.fusion_layer]
    assert not any(p.requires_grad for p in fusion.parameters())
    assert model.text_encoder.bert.embeddings.word_embeddings.weight.requires_grad  # tied, used by VTC
    summary = run(tmp_path, "train.steps=2", "loss.vtm=0", "loss.mlm=0")
    rec = records(tmp_path)[-1]
    assert "loss_vtm" not in rec and "loss_mlm" not in rec and rec["loss_vtc"] is not None
    torch.manual_seed(0)  # as the loop does before building (train.seed=0)
    before = build_models(cfg, torch.device("cpu")).model.itm_head.weight
    assert torch.equal(weights(tmp_path)["itm_head.weight"], before)  # same init, never trained
    assert summary["steps"] == 2


def test_stage2_evaluates_zero_shot_retrieval_during_training(tmp_path, synthetic_shards):
    summary = run(tmp_path, "train.steps=2", "train.eval_every=1", f"eval.source={synthetic_shards}",
                  "train.best_metric=r_mean")
    evals = [r for r in records(tmp_path) if "eval/r_mean" in r]
    assert [e["step"] for e in evals] == [1, 2]
    assert {"eval/t2v_r1", "eval/v2t_r1", "eval/sim/r_mean", "eval/num_videos"} <= set(evals[0])
    assert evals[0]["eval/num_videos"] == 24
    assert summary["best"]["metric"] == "r_mean"
    assert (tmp_path / "checkpoints" / "best.pt").exists()


def test_umt_eval_retrieval_writes_both_rankings(tmp_path, synthetic_shards, tiny_stage2):
    s2 = tiny_stage2
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", "retrieval", "--config", "tiny", "--model", s2["checkpoint"],
                                 "--data", synthetic_shards, "--output", str(out), "eval.k=4"])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_videos"] == 24 and m["num_texts"] == 24
    for ranking in ("similarity", "itm"):
        assert {"t2v_r1", "v2t_r10", "r_mean", "img_r1", "txt_r1", "txt_r_mean"} <= set(m[ranking])
        assert m[ranking]["img_r1"] == m[ranking]["t2v_r1"] and m[ranking]["txt_r5"] == m[ranking]["v2t_r5"]
    assert m["protocol"]["k"] == 4 and m["protocol"]["frames"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "eval-retrieval" and summary["checkpoint"] == s2["checkpoint"]
    assert "eval:" in (out / "config.yaml").read_text()
    # k beyond the number of candidates is clamped; k=0 is similarity only
    r = CliRunner().invoke(app, ["eval", "retrieval", "--config", "tiny", "--model", s2["checkpoint"],
                                 "--data", synthetic_shards, "--output", str(tmp_path / "e0"), "eval.k=0"])
    assert r.exit_code == 0, r.output
    assert "itm" not in json.loads((tmp_path / "e0" / "metrics.json").read_text())


def test_eval_requires_its_inputs():
    r = CliRunner().invoke(app, ["eval", "retrieval", "--config", "tiny", "--model", "",
                                 "--data", "x.json", "--output", "o"])
    assert r.exit_code == 2 and "model.pretrained" in r.output


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc, module, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                    "-m", module, *args], check=True, env=env, timeout=600)


@pytest.mark.slow
def test_stage2_two_processes_agree_with_one(tmp_path):
    """VTC gathered with the exact gradient ('full') and UTA with mask noise drawn for the
    global batch: 2 x 4 clips == 1 x 8 clips. VTM and MLM are off: as officially, VTM draws its
    negatives from each rank's local batch and MLM averages over each rank's masked tokens, so
    both depend on the split by design. Dropout is off so the RNG streams do not matter."""
    common = ["train.steps=2", "train.ckpt_every=2", "loss.vtm=0", "loss.mlm=0",
              "loss.vtc_gather_grad=full", "model.text_dropout=0", "train.log_every=1"]
    _torchrun(2, "umt.train.stage2", "--config", "tiny", *common, f"train.output_dir={tmp_path / 'ddp'}",
              "train.batch_size=4")
    main("tiny", [*common, f"train.output_dir={tmp_path / 'one'}", "train.batch_size=8"])  # in this process
    one, ddp = weights(tmp_path / "one"), weights(tmp_path / "ddp")
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-4, atol=2e-5, msg=k)
    assert [r["loss"] for r in records(tmp_path / "one")] == pytest.approx(
        [r["loss"] for r in records(tmp_path / "ddp")], rel=1e-4)


@pytest.mark.slow
def test_retrieval_eval_two_processes_agree_with_one(tmp_path, synthetic_shards, tiny_stage2):
    from umt.eval.retrieval_job import main as evaluate

    args = [f"model.pretrained={tiny_stage2['checkpoint']}", f"data.source={synthetic_shards}",
            "eval.k=4", "eval.num_workers=2"]
    _torchrun(2, "umt.eval.retrieval_job", "--config", "tiny", *args, f"train.output_dir={tmp_path / 'two'}")
    evaluate("tiny", [*args, f"train.output_dir={tmp_path / 'one'}"])  # the reference, in this process
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_videos"] == two["num_videos"] == 24
    for ranking in ("similarity", "itm"):
        assert one[ranking] == pytest.approx(two[ranking], abs=1e-6)
