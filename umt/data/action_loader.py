"""Action-recognition data: augmented training views and multi-view test clips.

Training (:func:`build_action_loader`), a WebDataset training stream of
:mod:`umt.data.loader_kit` (resampled shards per rank, shuffle buffer, per-(seed, rank,
worker slot, epoch) seeds, resume at a step, bad samples skipped and counted) with the
fine-tuning sample transform::

    decode T frames (data.sampler: the official Kinetics 'segment' or SSv2 'tsn' positions,
                     umt.data.action_sampling)
      -> umt.data.clip_augment.action_train_views: num_sample independent views
         (RandAugment, RandomResizedCrop, flip, random erasing; one draw per view for all frames)
      -> batches of ``batch_size`` **views**: ``batch_size / num_sample`` videos, the views of a
         video next to each other, each its own row with the video's label (the official
         ``multiple_samples_collate``)

    {"video": float [B, 3, T, S, S], "label": long [B], "key": list[str], "step", "epoch"}

An epoch is one pass over the *videos*: ``num_samples // (videos per batch x world size)``
steps (official ``len(dataset) // (batch_size x GPUs)``, with ``drop_last``), unless
``data.epoch_steps`` says otherwise. A sample without a label (or with one outside dataset.json's
classes) is skipped and counted like any malformed sample. ``source: synthetic`` renders the
temporal-order demo clips (``umt.data.synthetic``, labels 0-3) instead: a pure function of
(seed, step, rank), so a resumed run replays exactly.

Evaluation (:func:`build_action_eval_loader`): every video exactly once over ranks x DataLoader
workers (:class:`umt.data.loader_kit.EvalSplit`), ``num_clips`` temporal clips (the sampler's
test positions) x ``num_crops`` spatial crops (short side -> S, crops along the long side) per
video, in the official view order (clip, then crop)::

    {"video": float [B, V, 3, T, S, S], "label": long [B], "uid": list[str] (shard:key, unique),
     "id": list[str] (the manifest id, else the key), "index": list[int] (manifest position,
     -1 if unknown)}
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial
from typing import Optional

import numpy as np
import torch

from umt.configs.finetune_action import ActionAugmentConfig
from umt.data import dataset_json, synthetic
from umt.data.action_sampling import frame_indices, picker
from umt.data.clip_augment import ActionAugment
from umt.data.decoders import get_decoder
from umt.data.loader_kit import (
    DEFAULT_MAX_PIXELS,
    ClipLoader,
    EvalSplit,
    Skips,
    TrainStream,
    data_loader,
    eval_pipeline,
    rank_shards,
    skip_sample,
    train_stages,
)
from umt.data.samples import SampleError, label_of, parse_meta, read_clip
from umt.data.transforms import test_transforms
from umt.seeds import derive_seed

log = logging.getLogger(__name__)


def dataset_classes(source: str, key: str = "data.source") -> list[str]:
    """Class names of a training / evaluation source; an error when it has none."""
    if source == "synthetic":
        return list(synthetic.CLASSES)
    classes = dataset_json.load(source).classes
    if not classes:
        raise ValueError(f"{key}={source} lists no classes (its dataset.json has no 'classes'): "
                         f"action recognition needs labelled videos; shard a manifest with a "
                         f"label column (umt shard ... --classes classes.txt)")
    return classes


def _label(sample: dict, meta: dict, num_classes: int) -> int:
    label = label_of(sample, meta, num_classes)
    if label < 0:
        raise SampleError("no label: action recognition needs a class per sample")
    return label


# ---------------------------------------------------------------------------------- training

def _train_sample(sample: dict, *, decoder, augment: ActionAugment, sampler: str, num_frames: int,
                  num_classes: int, max_pixels: Optional[int], skips: Skips,
                  rng: np.random.Generator) -> dict:
    try:
        meta = parse_meta(sample)
        label = _label(sample, meta, num_classes)
        frames = read_clip(sample, meta, decoder, picker(sampler, num_frames, train=True, rng=rng),
                           num_frames, max_pixels)
        # An image's frames as T real copies (read_clip gives a broadcast view): RandAugment
        # and the crops read every frame.
        frames = np.ascontiguousarray(frames)
        views = augment(frames, rng)  # num_sample x [3, T, S, S]
    except Exception as e:  # any malformed field or medium: skip this sample, never the run
        return skip_sample(skips, sample, e)
    skips.ok()
    return {"views": views, "label": label, "key": sample.get("__key__", "?")}


def collate_views(samples: list[dict], skips: Optional[Skips] = None) -> dict:
    """Flatten the views of each video into the batch, each with the video's label."""
    batch = {"video": torch.stack([v for s in samples for v in s["views"]]),
             "label": torch.tensor([s["label"] for s in samples for _ in s["views"]], dtype=torch.long),
             "key": [s["key"] for s in samples for _ in s["views"]]}
    if skips is not None:
        batch["skipped"] = dict(skips.take())
    return batch


def videos_per_batch(batch_size: int, num_sample: int) -> int:
    if batch_size % num_sample:
        raise ValueError(f"batch_size={batch_size} views is not a multiple of num_sample={num_sample}")
    return batch_size // num_sample


class SyntheticActionStream:
    """Synthetic labelled clips (``umt.data.synthetic``), augmented like real ones; batch
    ``step`` of ``rank`` is a pure function of (seed, step, rank)."""

    num_skipped = 0
    skip_reasons: Counter = Counter()

    def __init__(self, cfg, augment: ActionAugment, *, videos: int, num_frames: int, seed: int,
                 rank: int, world_size: int, start_step: int, epoch_steps: int):
        self.cfg, self.augment, self.videos, self.num_frames = cfg, augment, videos, num_frames
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step, self.epoch_steps = start_step, epoch_steps

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        epoch, pos = divmod(self.step, self.epoch_steps)
        n = self.cfg.synthetic_size
        perm = np.random.default_rng(derive_seed("synthetic-action", self.seed, epoch)).permutation(n)
        first = (pos * self.world_size + self.rank) * self.videos
        samples = []
        for k in range(self.videos):
            index = int(perm[(first + k) % n])
            frames, label, _ = synthetic.render_clip(derive_seed("clip", self.seed, index),
                                                     self.cfg.synthetic_frames,
                                                     self.cfg.synthetic_resolution)
            rng = np.random.default_rng(derive_seed("synthetic-augment", self.seed, self.step,
                                                    self.rank, k))
            idx = frame_indices(self.cfg.sampler, len(frames), self.num_frames, train=True, rng=rng)
            samples.append({"views": self.augment(frames[idx], rng), "label": label,
                            "key": f"synthetic-{index:06d}"})
        batch = collate_views(samples)
        batch.update(step=self.step, epoch=epoch)
        self.step += 1
        return batch


def build_action_loader(cfg, augment: ActionAugmentConfig, *, batch_size: int, num_frames: int,
                        img_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                        start_step: int = 0):
    """Endless training batches of ``batch_size`` views for this rank, from step ``start_step``.

    ``cfg`` is an ``ActionDataConfig`` (``umt.configs.finetune_action``); ``augment`` the
    augmentation settings (``num_sample`` views per decoded video).
    """
    videos = videos_per_batch(batch_size, augment.num_sample)
    aug = ActionAugment(augment, img_size)
    if cfg.source == "synthetic":
        steps = cfg.epoch_steps or max(1, cfg.synthetic_size // (videos * world_size))
        return SyntheticActionStream(cfg, aug, videos=videos, num_frames=num_frames, seed=seed,
                                     rank=rank, world_size=world_size, start_step=start_step,
                                     epoch_steps=steps)
    info = dataset_json.load(cfg.source)
    if not info.classes:
        raise ValueError(f"{cfg.source} lists no classes: action recognition needs labelled "
                         f"videos (shard a manifest with a label column, or pass --classes)")
    epoch_steps = cfg.epoch_steps or max(1, info.num_samples // (videos * world_size))
    skips = Skips()
    sample_fn = partial(_train_sample, decoder=get_decoder(cfg.decoder), augment=aug,
                        sampler=cfg.sampler, num_frames=num_frames, num_classes=len(info.classes),
                        max_pixels=cfg.max_pixels, skips=skips)

    make_stages = partial(train_stages, skips=skips, sample_fn=sample_fn,
                          shuffle_buffer=cfg.shuffle_buffer, batch_size=videos,
                          collate=partial(collate_views, skips=skips))
    stream = TrainStream(rank_shards(info.shard_uris(), rank, world_size), make_stages,
                         seed=("action", seed), rank=rank, start_step=start_step,
                         epoch_steps=epoch_steps)
    return ClipLoader(data_loader(stream, cfg.num_workers), start_step, info, epoch_steps)


# -------------------------------------------------------------------------------- evaluation

def _eval_sample(sample: dict, *, decoder, sampler: str, num_frames: int, img_size: int,
                 num_clips: int, num_crops: int, num_classes: int, max_pixels: Optional[int],
                 skips: Skips, rng=None) -> dict:
    try:
        meta = parse_meta(sample)
        label = _label(sample, meta, num_classes)
        views = []
        for c in range(num_clips):  # official view order: clip, then crop
            frames = read_clip(sample, meta, decoder,
                               picker(sampler, num_frames, train=False, clip_idx=c, num_clips=num_clips),
                               num_frames, max_pixels)
            views.extend(test_transforms(frames, img_size, num_crops))
    except Exception as e:  # as in training: skip and count, never stop the evaluation
        return skip_sample(skips, sample, e)
    skips.ok()
    key = sample.get("__key__", "?")
    index = meta.get("index")
    return {"video": torch.stack(views), "label": label,
            "uid": f"{sample.get('__url__', '')}:{key}", "id": str(meta.get("id", key)),
            "index": index if isinstance(index, int) and not isinstance(index, bool) else -1}


def _eval_collate(samples: list[dict], skips: Skips) -> dict:
    return {"video": torch.stack([s["video"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "uid": [s["uid"] for s in samples], "id": [s["id"] for s in samples],
            "index": [s["index"] for s in samples], "skipped": dict(skips.take())}


def build_action_eval_loader(source: str, *, batch_size: int, num_frames: int, img_size: int,
                             num_clips: int = 1, num_crops: int = 1, sampler: str = "segment",
                             rank: int = 0, world_size: int = 1, num_workers: int = 0,
                             decoder: str = "decord",
                             max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> ClipLoader:
    """One pass over this rank's share of the labelled videos of ``source`` (dataset.json),
    ``num_clips * num_crops`` views each; the last batch may be smaller."""
    info = dataset_json.load(source)
    if not info.classes:
        raise ValueError(f"{source} lists no classes: an action evaluation needs labelled videos")
    split = EvalSplit(info.shard_uris(), rank, world_size, [s.num_samples for s in info.shards])
    skips = Skips()
    fn = partial(_eval_sample, decoder=get_decoder(decoder), sampler=sampler,
                 num_frames=num_frames, img_size=img_size, num_clips=num_clips,
                 num_crops=num_crops, num_classes=len(info.classes), max_pixels=max_pixels,
                 skips=skips)
    pipeline = eval_pipeline(split, skips=skips, sample_fn=fn, batch_size=batch_size,
                             collate=partial(_eval_collate, skips=skips))
    return ClipLoader(data_loader(pipeline, num_workers), 0, info)


__all__ = ["build_action_loader", "build_action_eval_loader", "collate_views",
           "SyntheticActionStream", "videos_per_batch"]
