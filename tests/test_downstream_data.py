"""Downstream annotations: multiple-choice candidates and QA questions through the manifest,
``umt shard`` and the sample .json; the answer list; paragraph and class-level retrieval
queries; the QA training loader."""

import json

import pytest
import torch

from umt.data import dataset_json, downstream, synthetic_tasks
from umt.data.manifest import ManifestError, load_manifest
from umt.data.shard import shard_dataset


# ----------------------------------------------------------------------------- parsing
def test_questions_are_normalised_and_checked():
    qs = downstream.parse_questions(json.dumps([
        {"question": "what is it", "answer": "a cat"},
        {"question": "who", "answer": ["bob", "bob", "amy"], "id": 7, "type": "who"}]), "v1")
    assert qs == [{"id": "v1#0", "question": "what is it", "answers": ["a cat"], "type": None},
                  {"id": "7", "question": "who", "answers": ["bob", "bob", "amy"], "type": "who"}]
    for bad, words in ([], "non-empty list"), ([{"question": "q"}], "'answer'"), \
            ([{"question": "", "answer": "a"}], "question must be"), \
            ([{"question": "q", "answer": []}], "'answer'"), \
            ([{"question": "q", "answer": "a", "id": 1}, {"question": "r", "answer": "b", "id": 1}], "twice"), \
            ([{"question": "q", "answer": "a", "extra": 1}], "unknown fields"), ("[1,", "not"):
        with pytest.raises(downstream.AnnotationError, match=words):
            downstream.parse_questions(bad, "v")


def test_answers_weighted_by_frequency_as_officially():
    answers, weights = downstream.answers_with_weights(["a", "b", "a", "a"])
    assert answers == ["a", "b"] and weights == pytest.approx([0.75, 0.25])
    assert downstream.ground_truth(["b", "a", "a", "b"]) == "b"  # tie: the first listed
    assert downstream.ground_truth(["b", "a", "a"]) == "a"


def test_candidates_and_answer_index():
    assert downstream.parse_candidates('["x", "y"]') == ["x", "y"]
    assert downstream.parse_answer_index("1", 2) == 1
    for bad in (["x"], "x", ["x", ""], [1, 2]):
        with pytest.raises(downstream.AnnotationError):
            downstream.parse_candidates(bad)
    for bad in (2, -1, "²", True, 1.0):
        with pytest.raises(downstream.AnnotationError):
            downstream.parse_answer_index(bad, 2)


def test_answer_list_must_be_a_non_empty_list_of_distinct_strings(tmp_path):
    for bad, words in ([], "empty"), ({"a": 1}, "empty"), (["a", "a"], "distinct"), (["a", ""], "non-empty"):
        (tmp_path / "al.json").write_text(json.dumps(bad))
        with pytest.raises(downstream.AnnotationError, match=words):
            downstream.load_answer_list(str(tmp_path / "al.json"))
    with pytest.raises(downstream.AnnotationError, match="not found"):
        downstream.load_answer_list(str(tmp_path / "none.json"))
    assert downstream.default_answer_list("s3://b/x/dataset.json") == "s3://b/x/answer_list.json"


# ----------------------------------------------------------------------------- manifest + shard
@pytest.fixture(scope="module")
def qa_mc_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotated")
    qa = synthetic_tasks.write_task_dataset(str(root / "qa"), 4, "qa", num_frames=8)
    mc = synthetic_tasks.write_task_dataset(str(root / "mc"), 4, "mc", num_frames=8)
    return root, qa, mc


def test_manifest_rejects_malformed_annotations_with_the_line(qa_mc_videos, tmp_path):
    root, qa, _ = qa_mc_videos
    rows = [json.loads(line) for line in open(qa)]
    rows[2]["questions"] = [{"question": "q"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps({**r, "video": str(root / "qa" / r["video"])}) for r in rows))
    with pytest.raises(ManifestError, match=r"line 3: .*'answer'"):
        load_manifest(str(bad))
    bad.write_text(json.dumps({"video": "a.mp4", "candidates": ["x", "y"]}))
    with pytest.raises(ManifestError, match="both 'candidates' and 'answer'"):
        load_manifest(str(bad))


def test_shard_carries_questions_and_candidates_and_counts_questions(qa_mc_videos, tmp_path):
    _, qa, mc = qa_mc_videos
    info = shard_dataset(qa, str(tmp_path / "qa"), samples_per_shard=3, workers=1, progress=False,
                         shuffle=False)  # manifest order: video 0 first
    assert info.num_questions == 8 and [s.num_questions for s in info.shards] == [6, 2]
    # the manifest's answer_list.json travels with the shards (where the QA jobs look for it)
    assert downstream.load_answer_list(str(tmp_path / "qa" / "answer_list.json")) == \
        synthetic_tasks.answer_list()
    again = dataset_json.load(info.location)
    assert again.num_questions == 8
    import tarfile

    with tarfile.open(again.shard_uris()[0]) as tf:
        meta = json.loads(tf.extractfile([m for m in tf.getmembers() if m.name.endswith(".json")][0]).read())
    assert [q["type"] for q in meta["questions"]] == ["colour", "direction"]
    assert meta["questions"][1]["answers"] == ["right"]  # video 0: left to right
    info = shard_dataset(mc, str(tmp_path / "mc"), samples_per_shard=4, workers=1, progress=False,
                         shuffle=False)
    with tarfile.open(info.shard_uris()[0]) as tf:
        meta = json.loads(tf.extractfile([m for m in tf.getmembers() if m.name.endswith(".json")][0]).read())
    assert len(meta["candidates"]) == 5 and meta["answer"] in range(5)
    assert meta["candidates"][meta["answer"]].endswith(" square moving left to right")  # video 0
    assert info.num_questions == 0 and not (tmp_path / "mc" / "answer_list.json").exists()


# ----------------------------------------------------------------------------- retrieval queries
def test_retrieval_queries_by_caption_and_paragraph():
    from umt.eval.retrieval import query_texts

    caps = [["a b", "c"], ["a b"], ["d"]]
    keys = ["v0", "v1", "v2"]
    assert query_texts(caps, keys) == (["a b", "c", "a b", "d"], [0, 0, 1, 2])
    assert query_texts(caps, keys, "caption") == (["a b", "c", "d"], [[0, 1], [0], [2]])
    assert query_texts(caps, keys, paragraph=True) == (["a b c", "a b", "d"], [0, 1, 2])
    with pytest.raises(ValueError, match="v1 has no caption"):
        query_texts([["x"], []], keys[:2])


def test_paragraph_sampling_joins_a_videos_captions():
    from umt.configs.schema import VLDataConfig
    from umt.data.vl_loader import build_vl_loader

    cfg = VLDataConfig(sources=["synthetic"], caption_sampling="paragraph", synthetic_size=4,
                       num_workers=0)
    batch = next(b for b in build_vl_loader(cfg, batch_size=4, num_frames=4, img_size=32)
                 if b["media"] == "video")
    assert all(" motion of a " in c and c.startswith("a ") for c in batch["caption"])


def test_qa_loader_rows_answers_and_skips(qa_mc_videos, tmp_path):
    from umt.configs.finetune_qa import QADataConfig
    from umt.data.qa_loader import build_qa_loader

    _, qa, _ = qa_mc_videos
    info = shard_dataset(qa, str(tmp_path / "qa"), samples_per_shard=2, workers=1, progress=False)
    cfg = QADataConfig(sources=[info.location], num_workers=0, shuffle_buffer=0, flip=False)
    loader = build_qa_loader(cfg, batch_size=4, num_frames=4, img_size=32, seed=1,
                             answer_fits=lambda a: a != "jumping")
    assert loader.epoch_steps == 2  # 8 questions // 4
    seen = []
    for _ in range(6):
        b = next(loader)
        assert b["video"].shape == (4, 3, 4, 32, 32)
        assert b["answer_question"].tolist() == list(range(4)) and torch.all(b["weights"] == 1)
        seen += b["question_id"]
    assert set(seen) <= {f"synthetic-{i:06d}-{t}" for i in range(4) for t in ("colour", "direction")}
    assert "synthetic-000002-direction" not in seen  # its answer "jumping" does not fit
    assert loader.skip_reasons["answer too long"] >= 1


def test_qa_sources_without_questions_fail(synthetic_shards):
    from umt.data.qa_loader import describe_qa_sources

    with pytest.raises(ValueError, match="holds no QA questions"):
        describe_qa_sources([synthetic_shards])
