"""AVA: the frame mAP (``umt.eval.ava``) against hand-worked cases and the frozen official
evaluator's outputs (``tests/reference/ava_map_cases.json``, made by
``tests/reference/make_reference_ava.py``), and the readers of the official files."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from umt.data.annotation_formats import FormatError
from umt.data.ava import read_boxes, read_exclusions, read_labelmap
from umt.eval.ava import AP_PREFIX, MAP_KEY, ava_map, ava_map_rows
from umt.eval.detection_map import average_precision

REFERENCE = os.path.join(os.path.dirname(__file__), "reference", "ava_map_cases.json")

LABELMAP = """item {
  name: "one"
  id: 1
}
item {
  name: "three"
  id: 3
}
item { name: "four" id: 4 }
item { name: "five" label_id: 5 }   # never in the ground truth
item {
  name: "six"
  id: 6
}
"""


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_hand_worked_case(tmp_path):
    """Every rule of the official evaluator, one class each, exact values.

    class 1 at (v, 902): ground truth A = (0, 0, .5, .5), B = (.5, .5, 1, 1); detections by
    score: .9 on A (TP), .8 on A again (FP: A is taken), .7 = (.5, .5, 1, .9375) on B (IoU
    .9375, TP), .6 far away (FP). Precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1; made
    non-increasing: 1, 1, 2/3, 2/3; AP = 1/2 * 1 + 1/2 * 2/3 = 5/6. An excluded keyframe
    (v, 905) holds one more class-1 box without detection: dropped, so the recall stays 1.

    class 3 at (v, 903), VOC's "no second choice": A = (0, 0, .4, 1), B = (.1, 0, .5, 1);
    .9 exactly on A (TP); .8 = (.04, 0, .44, 1) has IoU .818 with A and .739 with B, takes A
    (its best), which is taken: FP, though B is free; .7 exactly on B (TP). Precision 1, 1/2,
    2/3 at recall 1/2, 1/2, 1: AP = 5/6 (a matcher falling back to B would give 1).

    class 4: ground truth at (v, 904) and no detection: AP 0 (in the mean).
    class 5: in the label map, never in the ground truth: AP NaN (out of the mean).
    class 6: one box at (v, 902) of half the frame (0, 0, .5, 1); .9 at (w, 902), a keyframe
    without ground truth (FP); .8 = (0, 0, 1, 1) with IoU exactly .5 (TP, >=). Precision 0, 1/2
    at recall 0, 1: AP = 1/2.
    class 2 is not in the label map: its rows (a perfect detection too) are ignored.

    mAP = (5/6 + 5/6 + 0 + 1/2) / 4 = 13/24. Timestamps "0902" and "902" are one keyframe.
    """
    gt = """v,0902,0,0,0.5,0.5,1,0
v,0902,0.5,0.5,1,1,1,1
v,0903,0,0,0.4,1,3,0
v,0903,0.1,0,0.5,1,3,1
v,0904,0.2,0.2,0.4,0.4,4,0
v,0905,0.2,0.2,0.4,0.4,1,0
v,0902,0,0,0.5,1,6,2
v,0902,0,0,0.5,0.5,2,0
"""
    det = """v,902,0,0,0.5,0.5,1,0.9
v,902,0,0,0.5,0.5,1,0.8
v,902,0.5,0.5,1,0.9375,1,0.7
v,902,0.9,0.9,1,1,1,0.6
v,903,0,0,0.4,1,3,0.9
v,903,0.04,0,0.44,1,3,0.8
v,903,0.1,0,0.5,1,3,0.7
w,902,0,0,1,1,6,0.9
v,902,0,0,1,1,6,0.8
v,902,0,0,0.5,0.5,2,0.99
"""
    got = ava_map(_write(tmp_path, "gt.csv", gt), _write(tmp_path, "det.csv", det),
                  _write(tmp_path, "labels.pbtxt", LABELMAP),
                  _write(tmp_path, "excluded.csv", "v,0905\n"))
    assert list(got) == [MAP_KEY] + [AP_PREFIX + n for n in ("one", "three", "four", "five", "six")]
    assert got[AP_PREFIX + "one"] == pytest.approx(5 / 6, abs=1e-12)
    assert got[AP_PREFIX + "three"] == pytest.approx(5 / 6, abs=1e-12)
    assert got[AP_PREFIX + "four"] == 0.0
    assert math.isnan(got[AP_PREFIX + "five"])
    assert got[AP_PREFIX + "six"] == pytest.approx(0.5, abs=1e-12)
    assert got[MAP_KEY] == pytest.approx(13 / 24, abs=1e-12)
    # Without the exclusion the class-1 box at (v, 905) is a miss: recall tops at 2/3, AP =
    # 1/3 * 1 + 1/3 * 2/3 = 5/9.
    no_excl = ava_map(str(tmp_path / "gt.csv"), str(tmp_path / "det.csv"),
                      str(tmp_path / "labels.pbtxt"))
    assert no_excl[AP_PREFIX + "one"] == pytest.approx(5 / 9, abs=1e-12)


def test_average_precision_is_the_voc_area():
    """TP, FP, TP, FP over 2 boxes -> 5/6 (see above); no detection -> 0; no box -> NaN."""
    tp = np.array([True, False, True, False])
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), tp, 2) == pytest.approx(5 / 6)
    # Order comes from the scores, not the input order.
    assert average_precision(np.array([0.6, 0.7, 0.8, 0.9]), tp[::-1].copy(), 2) == \
        pytest.approx(5 / 6)
    assert average_precision(np.zeros(0), np.zeros(0, dtype=bool), 3) == 0.0
    assert math.isnan(average_precision(np.zeros(0), np.zeros(0, dtype=bool), 0))


def test_matches_frozen_official_outputs():
    ref = json.load(open(REFERENCE))
    assert len(ref["cases"]) >= 6
    for case in ref["cases"]:
        got = ava_map_rows(read_boxes(case["groundtruth_csv"], "gt"),
                           read_boxes(case["detections_csv"], "det", scored=True),
                           read_labelmap(case["labelmap_pbtxt"], "labels"),
                           read_exclusions(case["exclusions_csv"], "excluded"))
        want = case["official_metrics"]
        assert list(got) == list(want), case["seed"]
        for k, v in want.items():
            if v is None:
                assert math.isnan(got[k]), (case["seed"], k)
            else:
                assert got[k] == pytest.approx(v, abs=1e-12), (case["seed"], k)


def test_readers():
    rows = read_boxes("abc,0902,0.1,0.2,0.3,0.4,12,7\n\nabc,903,0,0,1,1,1\n", "train.csv")
    assert [(r.key, r.box, r.action, r.person, r.line) for r in rows] == [
        (("abc", 902), (0.1, 0.2, 0.3, 0.4), 12, 7, 1), (("abc", 903), (0, 0, 1, 1), 1, None, 3)]
    det = read_boxes("abc,0902,0.1,0.2,0.3,0.4,,0.97\n", "boxes.csv", scored=True)
    assert det[0].action is None and det[0].score == 0.97
    assert read_exclusions("a,0902\nb,1798\n", "ex.csv") == {("a", 902), ("b", 1798)}
    assert read_labelmap(LABELMAP, "l.pbtxt") == [(1, "one"), (3, "three"), (4, "four"),
                                                  (5, "five"), (6, "six")]


@pytest.mark.parametrize("text,scored,message", [
    ("a,902,0,0,1,1\n", False, "train.csv: line 1: 6 columns, expected 7 or 8"),
    ("a,902,0,0,1,1,3\n", True, "line 1: 7 columns, expected 8"),
    ("a,0902,0,0,1,1,1,1\na,09x2,0,0,1,1,1,1\n", False, "line 2: timestamp '09x2' is not an integer"),
    ("a,902,0,0,1.5,1,1,1\n", False, "line 1: box [0.0, 0.0, 1.5, 1.0] is not normalised"),
    ("a,902,0.5,0,0.2,1,1,1\n", False, "line 1: box [0.5, 0.0, 0.2, 1.0] has x1 > x2"),
    ("a,902,0,0,1,1,0,1\n", False, "line 1: action_id 0 < 1"),
    ("a,902,0,0,1,1,1,nan\n", True, "line 1: score 'nan' is not finite"),
])
def test_box_csv_errors(text, scored, message):
    with pytest.raises(FormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_boxes(text, "train.csv", scored=scored)


@pytest.mark.parametrize("text,message", [
    ('item {\n  name: "a"\n  id: 1\n', "l.pbtxt: line 1: item not closed"),
    ('item {\n  name: "a"\n  id: 1\n}\nitem {\n  name "b"\n}\n', "line 6: expected 'field: value'"),
    ('item { name: "a" }\n', "line 1: item without a name and an id"),
    ('item { name: "a" id: 1 }\nitem { name: "b" id: 1 }\n', "id 1 appears more than once"),
    ('item { name: "a" id: 1 };\n', "line 1: unexpected character ';'"),
    ("", "no 'item"),
])
def test_labelmap_errors(text, message):
    with pytest.raises(FormatError, match=message):
        read_labelmap(text, "l.pbtxt")


def test_exclusions_errors():
    with pytest.raises(FormatError, match="ex.csv: line 2: 3 columns, expected 2"):
        read_exclusions("a,902\na,903,1\n", "ex.csv")


# -- the model ---------------------------------------------------------------------------------
def _tiny_box_model(**kw):
    from umt.models.box_head import build_box_model

    return build_box_model("umt_vit_tiny_patch16_224", num_frames=4, img_size=32, embed_dim=24,
                           depth=1, num_heads=2, num_classes=80, **kw)


def test_roi_pooling_takes_the_box_region_of_the_temporal_mean():
    import torch

    from umt.models.box_head import pooled_map, roi_features

    # 2 frames of a 4 x 4 grid, 1 channel: frame 0 all zeros, frame 1 a 2 at cell (y=1, x=3).
    tokens = torch.zeros(1, 2 * 16, 1)
    tokens[0, 16 + 1 * 4 + 3, 0] = 2.0
    fmap = pooled_map(tokens, (2, 4, 4))                                  # [1, 1, 4, 4]
    assert fmap.shape == (1, 1, 4, 4) and fmap[0, 0, 1, 3] == 1.0 and fmap.sum() == 1.0
    boxes = torch.tensor([[0.75, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0]])  # over it / elsewhere
    out = roi_features(fmap, boxes, torch.tensor([0, 0]))                 # [2, 1]
    assert out.shape == (2, 1) and out[0, 0] > 0.5 and out[1, 0] == 0.0


def test_box_model_layout_and_checkpoints(tmp_path):
    import torch

    from umt.models.box_head import extend_boxes, jitter_boxes, load_box_state_dict

    model = _tiny_box_model()
    video = torch.randn(2, 3, 4, 32, 32)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0], [0.2, 0.3, 0.4, 0.5]])
    assert model(video, boxes, torch.tensor([0, 1, 1])).shape == (3, 80)
    sd = {k: v for k, v in model.state_dict().items() if k != "pos_embed"}
    # The official detection module's keys (no fc_norm, a final norm, the head).
    assert {k.split(".")[0] for k in sd} == {"patch_embed", "blocks", "norm", "head"}
    other = _tiny_box_model()
    report = load_box_state_dict(other, sd, "x",
                                 require_head=True)
    assert report.fresh == [] and torch.equal(other.head.weight, model.head.weight)
    # The official start: a K710 classifier (fc_norm, a 710-way head): norm and head fresh.
    k710 = {k: v for k, v in sd.items() if not k.startswith(("norm.", "head."))}
    k710.update({"fc_norm.weight": torch.ones(24), "fc_norm.bias": torch.zeros(24),
                 "head.weight": torch.zeros(710, 24), "head.bias": torch.zeros(710)})
    report = load_box_state_dict(_tiny_box_model(), k710, "k710.pt")
    assert set(report.fresh) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    with pytest.raises(ValueError, match="k710.pt has no"):
        load_box_state_dict(_tiny_box_model(), k710, "k710.pt", require_head=True)
    with pytest.raises(Exception, match="unexpected keys"):
        load_box_state_dict(_tiny_box_model(), {**sd, "extra.weight": torch.zeros(1)}, "bad.pt")
    j = jitter_boxes(boxes, torch.Generator().manual_seed(0))
    assert (j[:, 2:] > j[:, :2]).all() and (j >= 0).all() and (j <= 1).all()
    assert torch.allclose(extend_boxes(boxes[:1]), torch.tensor([[0.08, 0.08, 0.52, 0.92]]))


def test_tiny_finetune_and_eval_run_end_to_end(tmp_path):
    from umt.eval import ava as ava_job
    from umt.train import finetune_ava

    out = finetune_ava.main("tiny", [f"train.output_dir={tmp_path}/ft", "train.steps=2",
                                     "train.ckpt_every=2", "data.synthetic_size=16",
                                     "eval.source=synthetic", "eval.synthetic_size=4"])
    assert out["steps"] == 2 and 0 <= out["eval"]["mAP"] <= 100 and "random_mAP" in out["eval"]
    summary = ava_job.main("tiny", [f"model.pretrained={out['checkpoint']}",
                                    "data.source=synthetic", "eval.synthetic_size=4",
                                    f"train.output_dir={tmp_path}/ev"])
    assert set(summary["metrics"]) == {"mAP", "random_mAP", "num_keyframes"}
    metrics = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert metrics[MAP_KEY] * 100 == pytest.approx(metrics["mAP"])
    assert metrics[AP_PREFIX + "move right"] >= 0 and metrics["num_keyframes"] == 4
    json.loads((tmp_path / "ev" / "metrics.json").read_text(), parse_constant=pytest.fail)
    # The files are the official ones: the evaluation re-reads them to the same number.
    ev = tmp_path / "ev"
    again = ava_map(str(ev / "groundtruth.csv"), str(ev / "detections.csv"),
                    str(ev / "labelmap.pbtxt"))
    assert again[MAP_KEY] == pytest.approx(metrics[MAP_KEY], abs=1e-12)
    assert (ev / "per_class_ap.png").read_bytes()[:4] == b"\x89PNG"


def test_person_boxes_json():
    from umt.data.ava import read_person_boxes_json

    images = json.dumps({"images": [{"id": 7, "movie": "m1", "timestamp": 902, "width": 100,
                                     "height": 50}]})
    boxes = json.dumps([{"image_id": 7, "bbox": [10, 5, 20, 10], "score": 0.9},
                        {"image_id": 7, "bbox": [0, 0, 200, 80], "score": 0.5}])
    rows = read_person_boxes_json(boxes, "det.json", images, "min.json", score_threshold=0.8)
    assert [(r.key, r.box, r.score, r.action) for r in rows] == [
        (("m1", 902), (0.1, 0.1, 0.3, 0.3), 0.9, None)]
    assert read_person_boxes_json(boxes, "det.json", images, "min.json")[1].box == (0, 0, 1, 1)
    with pytest.raises(FormatError, match="det.json: entry 0: image_id 8 is not in min.json"):
        read_person_boxes_json(json.dumps([{"image_id": 8, "bbox": [0, 0, 1, 1], "score": 1}]),
                               "det.json", images, "min.json")
    with pytest.raises(FormatError, match="det.json: line 1: not JSON"):
        read_person_boxes_json("[{", "det.json", images, "min.json")


def test_box_model_matches_the_official_detection_model():
    """``ava_head_8x112.pt`` (``make_reference_ava.py --official-detection``): the official
    ``modeling_finetune.VisionTransformer`` of the detection code, perturbed weights in its
    on-disk layout ``{'model': sd}``; its logits for 3 pixel boxes in 2 clips. Ours loads the
    file strictly and gives the same logits for the same boxes normalised. (The official table
    is the sinusoid of its own 8 x 7 x 7 grid: ``pretrain_grid`` says so here; at 224 px and 8
    frames, the presets', both are the 8 x 14 x 14 sinusoid.)"""
    import torch

    from umt.models.box_head import build_box_model, load_box_state_dict
    from umt.models.checkpoint import extract_state_dict

    ref = torch.load(os.path.join(os.path.dirname(REFERENCE), "ava_head_8x112.pt"),
                     weights_only=True)
    hp = ref["hparams"]
    model = build_box_model("umt_vit_tiny_patch16_224", num_frames=8, img_size=112,
                            embed_dim=hp["embed_dim"], depth=hp["depth"],
                            num_heads=hp["num_heads"], num_classes=80,
                            pretrain_grid=(8, 7, 7)).eval()
    report = load_box_state_dict(model, extract_state_dict(ref["checkpoint"]), "ref",
                                 require_head=True)
    assert report.fresh == [] and report.dropped == []
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1, 1)
    x = (ref["input_u8"].float() / 255 - mean) / std
    with torch.no_grad():
        logits = model(x, ref["boxes_px"] / 112.0, ref["batch_index"])
    assert torch.allclose(logits, ref["logits"], atol=1e-5, rtol=1e-4), \
        (logits - ref["logits"]).abs().max()
