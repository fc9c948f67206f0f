"""Stream clips from WebDataset shards (local or s3://) described by a ``dataset.json``.

Training (``build_webdataset_loader``, behind ``umt.data.stream.build_pretrain_loader``), the
open_clip recipe adapted to video, built from the stages of :mod:`umt.data.loader_kit`::

    shard sampler (with replacement from this rank's shard slice; every DataLoader worker draws
                   from the whole slice with its own seed (seed, rank, worker, epoch))
      -> boto3 / local byte stream (never a ``pipe:`` shell command)
      -> tar -> samples (a corrupt tar is logged and skipped)
      -> shuffle buffer of undecoded samples (cfg.shuffle_buffer)
      -> decode (decord | pyav) + sparse segment sampling + multi-scale crop + flip + normalise
      -> batches of ``{"video": [B, 3, T, H, W], "label": [B], "caption", "key", "step", "epoch"}``
      -> DataLoader(cfg.num_workers), batches made inside the workers

Epochs are defined in steps: ``cfg.epoch_steps`` batches per rank (default: ``num_samples //
(batch_size * world_size)`` from dataset.json, at least 1). Step ``s`` belongs to epoch
``s // epoch_steps``; the DataLoader hands out batches round-robin, so step ``s`` is made by
worker slot ``s % num_workers``, and that slot re-seeds its shard sampling, shuffle buffer and
augmentation at every epoch from ``(seed, rank, slot, epoch)``. A run resumed at step ``s``
starts in epoch ``s // epoch_steps`` at the right position (its first epoch boundary is at the
same step as in an uninterrupted run), draws fresh shards for the rest of that epoch (seeded with
the resume step as well, so the epoch's first steps are not replayed), and from the next epoch on
reads exactly the batches an uninterrupted run reads.

Unusable samples -- an undecodable video, a broken tar, any malformed field (``.json`` that is
not an object, captions that are not strings, a clip range that is not finite / ordered / inside
the video, a ``.cls`` that is not a small class index or is out of range for dataset.json's
classes), or media that would decode more than ``cfg.max_pixels`` pixels (checked on the header,
before decoding; see :mod:`umt.data.samples`) -- are skipped, never replaced by another sample,
never a crash: logged with their shard and key, and counted (``loader.num_skipped``,
``loader.skip_reasons``) in the training process. A decoder that kills its DataLoader worker
(decord aborts on some damaged files) costs that sample too: the training loaders restart their
workers at the current step and skip it from then on (:mod:`umt.data.worker_crash`).

Evaluation (``build_eval_loader``) reads every sample exactly once, split over ranks and workers,
with ``num_clips`` x ``num_crops`` views per video.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np
import torch

from umt.data import dataset_json
from umt.data.decoders import get_decoder
from umt.data.loader_kit import (
    DEFAULT_MAX_PIXELS,
    ClipLoader,
    EvalSplit,
    Skips,
    TrainStream,
    data_loader,
    default_epoch_steps,
    eval_pipeline,
    rank_shards,
    skip_sample,
    train_stages,
)
from umt.data.samples import captions_of, label_of, parse_meta, read_clip
from umt.data.sampling import segment_indices
from umt.data.transforms import test_transforms, train_transform


def read_frames(sample: dict, meta: dict, decoder, num_frames: int, *, train: bool,
                rng: Optional[np.random.Generator] = None, clip_idx: int = 0,
                num_clips: int = 1, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode one clip of a sample: uint8 ``[T, H, W, 3]`` (an image is repeated T times).

    ``max_pixels``: refuse (:class:`SampleError`) a sample that would decode more pixels
    (frame size x frames, checked on the header before decoding).
    """
    def pick(length: int) -> list[int]:
        return segment_indices(length, num_frames, train=train, rng=rng, clip_idx=clip_idx,
                               num_clips=num_clips)

    return read_clip(sample, meta, decoder, pick, num_frames, max_pixels)


def _train_sample(sample: dict, *, decoder, num_frames: int, img_size: int, scales, flip: bool,
                  skips: Skips, rng: np.random.Generator, num_classes: int = 0,
                  max_pixels: Optional[int] = None) -> dict:
    try:
        meta = parse_meta(sample)
        label = label_of(sample, meta, num_classes)
        captions = captions_of(sample, meta) or [""]
        frames = read_frames(sample, meta, decoder, num_frames, train=True, rng=rng,
                             max_pixels=max_pixels)
        video = train_transform(frames, img_size, scales, flip, rng)  # [3, T, S, S]
    except Exception as e:  # any malformed field or medium: skip this sample, never the run
        return skip_sample(skips, sample, e)
    skips.ok()
    return {"video": video, "label": label,
            "caption": captions[int(rng.integers(len(captions)))], "key": sample.get("__key__", "?")}


def _collate(samples: list[dict], skips: Skips) -> dict:
    return {"video": torch.stack([s["video"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "caption": [s["caption"] for s in samples], "key": [s["key"] for s in samples],
            "skipped": dict(skips.take())}


def build_webdataset_loader(cfg, *, batch_size: int, num_frames: int, img_size: int, seed: int = 0,
                            rank: int = 0, world_size: int = 1, start_step: int = 0) -> ClipLoader:
    """Training batches from ``cfg.source`` (dataset.json path or s3:// URI) for this rank.

    Yields ``{"video": float [B, 3, T, H, W] (ImageNet-normalised), "label": long [B] (-1 when
    unlabelled), "caption": list[str], "key": list[str], "step": int, "epoch": int}`` forever.
    """
    info = dataset_json.load(cfg.source)
    decoder = get_decoder(getattr(cfg, "decoder", "decord"))
    epoch_steps = getattr(cfg, "epoch_steps", None) or default_epoch_steps(
        info.num_samples, batch_size, world_size)
    if epoch_steps < 1:
        raise ValueError(f"epoch_steps must be >= 1, got {epoch_steps}")
    skips = Skips()
    sample_fn = partial(_train_sample, decoder=decoder, num_frames=num_frames, skips=skips,
                        img_size=img_size, scales=list(cfg.crop_scales), flip=cfg.flip,
                        num_classes=len(info.classes),
                        max_pixels=getattr(cfg, "max_pixels", DEFAULT_MAX_PIXELS))

    make_stages = partial(train_stages, skips=skips, sample_fn=sample_fn,
                          shuffle_buffer=cfg.shuffle_buffer, batch_size=batch_size,
                          collate=partial(_collate, skips=skips))
    stream = TrainStream(rank_shards(info.shard_uris(), rank, world_size), make_stages,
                         seed=seed, rank=rank, start_step=start_step, epoch_steps=epoch_steps)
    return ClipLoader(data_loader(stream, cfg.num_workers), start_step, info, epoch_steps)


def _eval_sample(sample: dict, *, decoder, num_frames: int, img_size: int, num_clips: int,
                 num_crops: int, skips: Skips, num_classes: int = 0,
                 max_pixels: Optional[int] = None, rng=None) -> dict:
    try:
        meta = parse_meta(sample)
        label = label_of(sample, meta, num_classes)
        captions = captions_of(sample, meta) or [""]
        views = []
        for c in range(num_clips):
            frames = read_frames(sample, meta, decoder, num_frames, train=False, clip_idx=c,
                                 num_clips=num_clips, max_pixels=max_pixels)
            views.extend(test_transforms(frames, img_size, num_crops))
    except Exception as e:  # as in training: skip and count, never stop the evaluation
        return skip_sample(skips, sample, e)
    skips.ok()
    return {"video": torch.stack(views), "label": label, "caption": captions[0],
            "key": sample.get("__key__", "?")}


def build_eval_loader(source, *, batch_size: int, num_frames: int, img_size: int,
                      num_clips: Optional[int] = None, num_crops: Optional[int] = None,
                      rank: int = 0, world_size: int = 1, num_workers: Optional[int] = None,
                      decoder: Optional[str] = None,
                      max_pixels: Optional[int] = None) -> ClipLoader:
    """One pass over every sample (this rank's share), ``V = num_clips * num_crops`` views each.

    ``source`` is a dataset.json path / s3:// URI, or a :class:`DataConfig` whose
    ``test_num_clips``, ``test_num_crops``, ``decoder`` and ``num_workers`` are then the defaults
    of the arguments left out (otherwise: 1 clip, 1 crop, decord, no workers).

    Yields ``{"video": float [B, V, 3, T, H, W], "label": long [B], "caption": list[str],
    "key": list[str], "step": int}``; the last batch may be smaller. Multi-view testing as in the
    official fine-tuning code: clip ``k`` takes the frames of ``kinetics_sparse._get_seq_frames``
    (see :mod:`umt.data.sampling`); crops are spread along the long side.
    """
    if not isinstance(source, str):  # a DataConfig
        cfg = source
        source = cfg.source
        num_clips = cfg.test_num_clips if num_clips is None else num_clips
        num_crops = cfg.test_num_crops if num_crops is None else num_crops
        decoder = cfg.decoder if decoder is None else decoder
        num_workers = cfg.num_workers if num_workers is None else num_workers
        max_pixels = getattr(cfg, "max_pixels", None) if max_pixels is None else max_pixels
    num_clips, num_crops = num_clips or 1, num_crops or 1
    decoder, num_workers = decoder or "decord", num_workers or 0
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    info = dataset_json.load(source)
    split = EvalSplit(info.shard_uris(), rank, world_size, [s.num_samples for s in info.shards])
    skips = Skips()
    sample_fn = partial(_eval_sample, decoder=get_decoder(decoder), num_frames=num_frames,
                        img_size=img_size, num_clips=num_clips, num_crops=num_crops, skips=skips,
                        num_classes=len(info.classes), max_pixels=max_pixels)
    pipeline = eval_pipeline(split, skips=skips, sample_fn=sample_fn, batch_size=batch_size,
                             collate=partial(_collate, skips=skips))
    return ClipLoader(data_loader(pipeline, num_workers), 0, info)
