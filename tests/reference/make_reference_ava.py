#!/usr/bin/env python
"""Freeze the official AVA evaluator's outputs on generated cases (``ava_map_cases.json``).

``tests/test_ava.py`` checks ``umt.eval.ava.ava_map`` against the file. The official code is
not a dependency: this script imports it from a directory given on its command line and is
only needed to regenerate the file. Regenerate (CPU, seconds)::

    mkdir -p /tmp/umt_official
    git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo archive HEAD \\
        single_modality/action_detection/alphaction/dataset/datasets/evaluation | tar -x -C /tmp/umt_official
    python tests/reference/make_reference_ava.py \\
        --official /tmp/umt_official/single_modality/action_detection/alphaction/dataset/datasets/evaluation \\
        --commit "$(git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo rev-parse HEAD)"
    # with the model case too (extract single_modality/action_detection the same way):
    #   --official-detection /tmp/umt_official/single_modality/action_detection

The official module is ``ava/ava_eval.py`` (``evaluate_predictions_on_ava``, the function the
official UMT detection fine-tune calls) and its copy of the TF object-detection
``pascal_evaluation``. It was written for numpy < 1.24, so ``np.float``, ``np.bool`` and
``np.NAN`` are restored as aliases before it is imported (nothing else is changed). Each case
gives the official function its inputs as the official code does: ground-truth CSV, label map
pbtxt and exclusions CSV files, and the detections as ``ava_results`` (it writes them to its
result CSV with 5 decimals and evaluates that file; the file's text is frozen as the case's
``detections_csv``).

Cases are random (seeded) and built to reach every branch: boxes jittered around the ground
truth (some under IoU 0.5), duplicate detections of one person (only the first can match),
detections in keyframes without ground truth, scores rounded to 1 decimal (ties), actions
outside the label map (dropped), label-map classes without ground truth (AP NaN), classes
with ground truth but no detection (AP 0), excluded keyframes in both files, zero-width boxes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile

import numpy as np


def load_official(path: str):
    for alias, value in (("float", float), ("bool", bool), ("int", int), ("NAN", np.nan)):
        if not hasattr(np, alias):
            setattr(np, alias, value)
    sys.path.insert(0, path)
    from ava import ava_eval  # noqa: E402  (the official package, from --official)

    return ava_eval


def make_case(seed: int, videos: int, stamps: int, num_ids: int):
    rng = np.random.default_rng(seed)
    vids = [f"vid{seed}_{i:02d}" for i in range(videos)]
    keys = [(v, 902 + 3 * t) for v in vids for t in range(stamps)]
    # The label map: most ids, not all (the rest are dropped from both files).
    in_map = sorted(rng.choice(np.arange(1, num_ids + 1), size=max(2, num_ids - 3), replace=False))
    in_map.append(num_ids + 2)  # a class of the map that never occurs: AP NaN
    names = {c: f"action {c} (x/y)" for c in in_map}
    gt_rows, persons = [], {}
    for k in keys:
        n = int(rng.integers(0, 4))
        for p in range(n):
            x1, y1 = rng.uniform(0, 0.6, 2)
            w, h = rng.uniform(0.1, 0.4, 2)
            box = (x1, y1, min(1.0, x1 + w), min(1.0, y1 + h))
            acts = rng.choice(np.arange(1, num_ids + 1), size=int(rng.integers(1, 4)), replace=False)
            persons.setdefault(k, []).append((box, acts))
            for a in acts:
                gt_rows.append((k, box, int(a), p))
    present = {a for *_, a, _ in gt_rows}
    excluded = [keys[int(rng.integers(len(keys)))]] if seed % 2 == 0 else []
    results = {}
    for k in keys:
        boxes, scores, actions = [], [], []
        for box, acts in persons.get(k, []):
            for copy in range(int(rng.integers(1, 3))):  # a duplicate now and then
                j = rng.normal(0, 0.04 + 0.08 * copy, 4)
                b = np.clip(np.array(box) + j, 0, 1)
                b[2], b[3] = max(b[2], b[0]), max(b[3], b[1])
                for a in range(1, num_ids + 1):
                    s = rng.uniform(0, 1) + (0.5 if a in acts else 0.0)
                    if rng.uniform() < 0.6:
                        boxes.append(b)
                        scores.append(round(min(s, 1.0), 1))
                        actions.append(a)
        for _ in range(int(rng.integers(0, 3))):  # false positives anywhere
            x1, y1 = rng.uniform(0, 0.7, 2)
            b = np.array([x1, y1, x1 + 0.2, y1 + 0.2])
            if rng.uniform() < 0.2:
                b[2] = b[0]  # zero width: the evaluator drops it
            boxes.append(b)
            scores.append(round(float(rng.uniform()), 1))
            actions.append(int(rng.integers(1, num_ids + 1)))
        if boxes:
            results[f"{k[0]},{k[1]:04d}"] = {
                "boxes": np.asarray(boxes, dtype=np.float64),
                "scores": np.asarray(scores, dtype=np.float64),
                "action_ids": np.asarray(actions, dtype=np.int64)}
    gt_csv = "".join(f"{k[0]},{k[1]:04d},{b[0]:.3f},{b[1]:.3f},{b[2]:.3f},{b[3]:.3f},{a},{p}\n"
                     for k, b, a, p in gt_rows)
    labelmap = "".join(f'item {{\n  name: "{names[c]}"\n  id: {c}\n}}\n' for c in in_map)
    excl = "".join(f"{v},{t:04d}\n" for v, t in excluded)
    return {"seed": seed, "groundtruth_csv": gt_csv, "labelmap_pbtxt": labelmap,
            "exclusions_csv": excl, "present_ids": sorted(int(a) for a in present)}, results


def head_case(detection_dir: str, commit, out_path: str) -> None:
    """The official detection model (``modeling_finetune.VisionTransformer`` of
    ``single_modality/action_detection``): 8 frames at 112 px, width 48, depth 2, 80 logits;
    every parameter perturbed; logits of ``forward_features`` + ``head`` (the eval-mode pooling
    on the boxes as given, without ``test_ext``, which we apply on normalised boxes) for 3 boxes
    in 2 clips. Saved: the checkpoint in the official on-disk layout ``{'model': sd}``, the
    uint8 input, the pixel boxes, the logits."""
    from functools import partial

    import torch

    sys.path.insert(0, detection_dir)
    import modeling_finetune as mf  # noqa: E402  (the official module, from --official-detection)
    from alphaction.structures.bounding_box import BoxList  # noqa: E402

    torch.manual_seed(0)
    hp = dict(img_size=112, patch_size=16, embed_dim=48, depth=2, num_heads=2, mlp_ratio=4,
              qkv_bias=True, num_classes=80, all_frames=8, tubelet_size=1, init_scale=1.0)
    model = mf.VisionTransformer(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **hp).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.03))
            if name.endswith("qkv.weight"):
                p[: 2 * 48].mul_(4.0)  # q and k: attention far from uniform
    u8 = torch.randint(0, 256, (2, 3, 8, 112, 112), dtype=torch.uint8)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1, 1)
    x = (u8.float() / 255 - mean) / std
    boxes = [torch.tensor([[10.0, 20.0, 60.0, 100.0], [0.0, 0.0, 112.0, 112.0]]),
             torch.tensor([[30.5, 40.25, 90.0, 70.0]])]
    proposals = [BoxList(b, (112, 112), mode="xyxy") for b in boxes]
    with torch.no_grad():
        logits = model.head(model.forward_features(x, proposals))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"case": "ava_head_8x112", "official_commit": commit, "hparams": hp,
                "checkpoint": {"model": sd}, "input_u8": u8, "boxes_px": torch.cat(boxes),
                "batch_index": torch.tensor([0, 0, 1]), "logits": logits,
                "versions": {"torch": str(torch.__version__)}}, out_path)
    print(f"wrote {out_path}: logits {tuple(logits.shape)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True,
                    help="the official .../alphaction/dataset/datasets/evaluation folder")
    ap.add_argument("--official-detection", default=None,
                    help="the official single_modality/action_detection folder: also write the "
                         "model case ava_head_8x112.pt")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "ava_map_cases.json"))
    args = ap.parse_args()
    ava_eval = load_official(args.official)
    logger = logging.getLogger("official")
    cases = []
    for seed, videos, stamps, ids in ((0, 2, 3, 5), (1, 3, 4, 8), (2, 4, 5, 10), (3, 2, 8, 6),
                                      (4, 5, 4, 12), (5, 1, 2, 3)):
        case, results = make_case(seed, videos, stamps, ids)
        with tempfile.TemporaryDirectory() as tmp:
            paths = {"csv_gt_file": os.path.join(tmp, "gt.csv"),
                     "labelmap_file": os.path.join(tmp, "labelmap.pbtxt"),
                     "exclusion_file": os.path.join(tmp, "excluded.csv")}
            for key, field in (("csv_gt_file", "groundtruth_csv"),
                               ("labelmap_file", "labelmap_pbtxt"),
                               ("exclusion_file", "exclusions_csv")):
                with open(paths[key], "w") as f:
                    f.write(case[field])
            result_csv = os.path.join(tmp, "result.csv")
            metrics = ava_eval.evaluate_predictions_on_ava(paths, results, result_csv, logger)
            with open(result_csv) as f:
                case["detections_csv"] = f.read()
        case["official_metrics"] = {k: (None if np.isnan(v) else float(v))
                                    for k, v in metrics.items()}
        cases.append(case)
    files = ("ava/ava_eval.py", "ava/pascal_evaluation/object_detection_evaluation.py",
             "ava/pascal_evaluation/per_image_evaluation.py", "ava/pascal_evaluation/metrics.py")
    sha = {f: hashlib.sha256(open(os.path.join(args.official, f), "rb").read()).hexdigest()
           for f in files}
    out = {"official_commit": args.commit, "official_files_sha256": sha,
           "numpy": np.__version__, "cases": cases}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}: {len(cases)} cases")
    if args.official_detection:
        head_case(args.official_detection, args.commit,
                  os.path.join(os.path.dirname(args.out), "ava_head_8x112.pt"))


if __name__ == "__main__":
    main()
