"""Video QA end to end on CPU: umt train finetune-qa (from a Stage-2 checkpoint, evaluation
with a best checkpoint and predictions), umt eval qa (metrics.json, predictions.jsonl, k
clamped, per-type accuracy), bad input failing before training, 2 processes == 1."""

import json

import pytest
import torch
from typer.testing import CliRunner

from umt.cli import app
from umt.models import create_model
from umt.models.text import MINILM


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("umt_vl_tiny_patch16_224", num_frames=4, img_size=64, embed_dim=96, depth=4,
                         num_heads=3, align_layers=2, text_encoder=MINILM, fusion_layer=4,
                         proj_dim=64, teacher_dim=32)
    path = tmp_path_factory.mktemp("s2") / "stage2.pt"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def qa_shards(tmp_path_factory):
    """8 synthetic videos, 2 questions each, in 3 shards, answer_list.json beside dataset.json."""
    from umt.data.shard import shard_dataset
    from umt.data.synthetic_tasks import write_task_dataset

    root = tmp_path_factory.mktemp("qa")
    manifest = write_task_dataset(str(root / "videos"), 8, "qa", num_frames=16)
    # umt shard copies the manifest's answer_list.json next to dataset.json
    return shard_dataset(manifest, str(root / "shards"), samples_per_shard=3, workers=1,
                         progress=False).location


def test_finetune_qa_then_eval_qa(tmp_path, stage2_ckpt, qa_shards):
    from umt.train.finetune_qa import main

    run = tmp_path / "run"
    summary = main("tiny", [f"model.pretrained={stage2_ckpt}", f"data.sources=[{qa_shards}]",
                            f"eval.source={qa_shards}", "train.steps=2", "train.eval_every=1",
                            "train.best_metric=accuracy", "train.log_every=1", "data.shuffle_buffer=4",
                            f"train.output_dir={run}"])
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "eval/accuracy" in r] == [1, 2]
    assert {"eval/accuracy/colour", "eval/accuracy/direction"} <= set(recs[-1])
    assert all(r["loss_qa"] > 0 for r in recs if "loss_qa" in r)
    assert summary["eval"]["num_questions"] == 16 and summary["best"]["metric"] == "accuracy"
    assert sorted(p.name for p in (run / "eval").iterdir()) == [
        "predictions_step_00000001.jsonl", "predictions_step_00000002.jsonl"]

    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["eval", "qa", "--config", "tiny", "--model", summary["checkpoint"],
                                 "--data", qa_shards, "--output", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["accuracy"] == pytest.approx(summary["eval"]["accuracy"])  # the same last checkpoint
    assert m["num_questions"] == 16 and m["num_videos"] == 8 and m["num_missing"] == 0
    assert m["protocol"]["k"] == 8 and m["answer_list_size"] == 8  # k=16 clamped to the list
    assert m["num_answers"] == 8  # the catalogue's chance level: 100 / num_answers
    assert set(m["accuracy_by_type"]) == {"colour", "direction"}
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and len({p["question_id"] for p in preds}) == 16
    p = preds[1]
    assert {"question_id", "question", "answers", "ground_truth", "prediction", "correct", "top",
            "key", "type"} <= set(p)
    assert p["prediction"] == p["top"][0][0] and len(p["top"]) == 5
    assert m["num_correct"] == sum(p["correct"] for p in preds)
    summary_eval = json.loads((out / "summary.json").read_text())
    assert set(summary_eval["metrics"]) == {"accuracy", "num_questions", "accuracy_colour",
                                            "accuracy_direction"}


def test_bad_qa_input_fails_before_training(tmp_path, stage2_ckpt, qa_shards, synthetic_shards):
    from umt.train.finetune_qa import main

    common = [f"model.pretrained={stage2_ckpt}", f"train.output_dir={tmp_path / 'run'}"]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="answer list is empty"):
        main("tiny", [*common, f"data.sources=[{qa_shards}]", f"eval.source={qa_shards}",
                      f"qa.answer_list={empty}"])
    long = tmp_path / "long.json"
    long.write_text(json.dumps(["red", "a rather long answer here"]))
    with pytest.raises(ValueError, match="qa.max_answer_len=5"):
        main("tiny", [*common, f"data.sources=[{qa_shards}]", f"eval.source={qa_shards}",
                      f"qa.answer_list={long}"])
    with pytest.raises(ValueError, match="holds no QA questions"):
        main("tiny", [*common, f"data.sources=[{synthetic_shards}]"])
    with pytest.raises(ValueError, match="answer list .* not found"):
        main("tiny", [*common, f"data.sources=[{qa_shards}]", f"eval.source={synthetic_shards}"])
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_eval_qa_two_processes_agree_with_one(tmp_path, stage2_ckpt, qa_shards):
    from test_stage2 import _torchrun as torchrun  # tests/ is on sys.path (rootdir conftest)

    qa = create_model("umt_qa_tiny_patch16_224", pretrained=stage2_ckpt, num_frames=12, img_size=64,
                      embed_dim=96, depth=4, num_heads=3, text_encoder=MINILM, fusion_layer=4)
    ckpt = tmp_path / "qa.pt"
    torch.save({"model": qa.state_dict()}, ckpt)
    from umt.eval.qa_job import main as evaluate

    args = [f"model.pretrained={ckpt}", f"data.source={qa_shards}",
            "eval.num_workers=2", "eval.batch_size=2", "eval.k=3"]
    torchrun(2, "umt.eval.qa_job", "--config", "tiny", *args, f"train.output_dir={tmp_path / 'two'}")
    evaluate("tiny", [*args, f"train.output_dir={tmp_path / 'one'}"])  # the reference, in this process
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_questions"] == two["num_questions"] == 16
    for k in ("accuracy", "num_correct", "accuracy_by_type"):
        assert one[k] == two[k]
    p1 = [json.loads(x) for x in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    p2 = [json.loads(x) for x in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in p1] == [p["question_id"] for p in p2]
    for a, b in zip(p1, p2):
        assert a["prediction"] == b["prediction"]
        assert [t[1] for t in a["top"]] == pytest.approx([t[1] for t in b["top"]], abs=1e-5)
