"""Stage-2 (vision-language) training batches: captioned videos and images, interleaved.

    loader = build_vl_loader(cfg.data, batch_size=64, num_frames=4, img_size=224, seed=0,
                             rank=rank, world_size=world, start_step=resume_step)
    batch = next(loader)
    # {"media": "video" | "image", "video": float [B, 3, T, H, W] (T = 1 for images),
    #  "caption": list[str] (clean_caption'ed), "sample_id": long [B], "media_id": long [B],
    #  "key": list[str],
    #  "step": int, "epoch": int}

As in the official multi-modality code:

- **Sources** (``cfg.sources``): dataset.json URIs written by ``umt shard`` from captioned
  manifests; each holds one media type (its ``media`` summary, or its first sample in older
  files). Sources of the same type are pooled into one stream, as the official ``ConcatDataset``
  per media type; shards are drawn in proportion to their (media, caption) pairs.
- **Epochs.** ``caption_sampling="all"``: every (media, caption) pair is one row of an epoch
  (officially each caption row is its own sample and its own VTC id), drawn one random caption
  per visit of a media, a media visited as often as it has captions
  (:func:`umt.data.loader_kit.spread_rows`), so that one media rarely appears twice in a batch
  (the official global row shuffle's property); ``"random"``: one random
  caption per media per visit; ``"paragraph"``: one row per media whose caption is all its
  captions joined with " " (official paragraph retrieval). A media type contributes
  ``rows // (its batch x world size)`` batches per epoch (at least 1); ``cfg.epoch_steps``
  rescales those counts to a total.
- **Interleaving** (the official MetaLoader): epoch ``e``'s order of video and image batches is
  a shuffle of ``["video"] * n_video + ["image"] * n_image`` seeded by
  ``derive_seed("vl-order", seed, e)``: every rank computes the same order, no broadcast.
- **Rows.** Frames by the official 'rand' sampler (:func:`umt.data.sampling.vl_frame_indices`),
  ``RandomResizedCrop(img_size, scale=crop_scale)`` bicubic + flip, one box for all frames
  (:func:`umt.data.transforms.vl_train_transform`); images are 1-frame clips (``T = 1``, not
  repeated). ``sample_id`` is a stable 63-bit hash of (source index, sample key, caption
  index): the same on every rank, distinct for two captions of one video (official Stage 2:
  the row index); ``media_id`` (source index, sample key) is shared by them, and rows of one
  media are never VTM negatives of each other.
- **Bad samples** (no caption, a caption empty after cleaning, malformed metadata, undecodable
  or oversized media, a video in an image source) are skipped and counted
  (``loader.num_skipped``, ``loader.skip_reasons``), never replaced or fatal.
- **Resume.** Each media type is a Stage-1 style stream (:mod:`umt.data.loader_kit`) over
  its own batch count: resuming at ``start_step`` puts every stream at the right position of
  the epoch, the rest of that epoch is freshly drawn, and from the next epoch on the batches
  equal an uninterrupted run's. ``sources: [synthetic]`` (captioned synthetic clips and
  images, no files) is a pure function of (seed, step, rank): a resumed run replays exactly.

DataLoader workers: ``cfg.num_workers`` per media type (as the official one loader per type).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator, Optional

import numpy as np
import torch

from umt.data import dataset_json, synthetic
from umt.data.captions import clean_caption
from umt.data.decoders import get_decoder
from umt.data.loader_kit import (
    ClipLoader,
    Skips,
    TrainStream,
    data_loader,
    first_media,
    rank_shards,
    skip_sample,
    spread_rows,
    train_stages,
)
from umt.data.samples import SampleError, captions_of, media_of, parse_meta, read_image, read_video
from umt.data.sampling import vl_frame_indices
from umt.data.transforms import normalize, to_float, vl_train_transform
from umt.seeds import derive_seed

log = logging.getLogger(__name__)

MEDIA = ("video", "image")


def sample_id(source: Any, key: str, caption_index: int) -> int:
    """The VTC id of one (media, caption) row: stable across ranks, runs and machines."""
    return derive_seed("sample-id", source, key, caption_index)


def media_id(source: Any, key: str) -> int:
    """The id of a row's media (all its captions share it): rows of one media are never each
    other's VTM negatives."""
    return derive_seed("media-id", source, key)


# ------------------------------------------------------------------------------- sources

@dataclass
class VLSource:
    """One dataset.json of ``cfg.sources`` as the loader sees it."""

    index: int
    uri: str
    info: dataset_json.DatasetInfo
    media: str  # video | image
    rows: int  # rows of one epoch (pairs for "all", media for "random")


def describe_sources(uris: list[str], caption_sampling: str) -> list[VLSource]:
    """Load every dataset.json of ``uris``; check each holds one media type."""
    out = []
    for i, uri in enumerate(uris):
        info = dataset_json.load(uri)
        kinds = [k for k, n in info.media.items() if n > 0]
        if len(kinds) > 1:
            raise ValueError(f"data.sources[{i}]={uri!r} mixes {info.media}; shard videos and "
                             f"images into separate datasets (one media type per source)")
        media = kinds[0] if kinds else first_media(info)
        if caption_sampling == "all" and info.num_captions is not None:
            rows = info.num_captions
        else:
            if caption_sampling == "all":
                log.warning("%s predates caption counts in dataset.json: assuming one caption "
                            "per sample for the epoch length", uri)
            rows = info.num_samples
        out.append(VLSource(index=i, uri=uri, info=info, media=media, rows=rows))
    return out


def epoch_counts(rows: dict[str, int], batch_sizes: dict[str, int], world_size: int,
                 epoch_steps: Optional[int] = None) -> dict[str, int]:
    """Batches per rank and epoch for each media type (see the module docstring)."""
    natural = {m: max(1, rows[m] // (batch_sizes[m] * world_size)) for m in rows if rows[m] > 0}
    if not natural:
        raise ValueError("the Stage-2 sources hold no captioned samples")
    if not epoch_steps:
        return natural
    if epoch_steps < len(natural):
        raise ValueError(f"data.epoch_steps={epoch_steps} cannot hold a batch of each of "
                         f"{sorted(natural)}")
    # Largest remainder, at least one batch per media type.
    total = sum(natural.values())
    exact = {m: epoch_steps * n / total for m, n in natural.items()}
    counts = {m: max(1, int(x)) for m, x in exact.items()}
    for m in sorted(exact, key=lambda m: exact[m] - int(exact[m]), reverse=True):
        if sum(counts.values()) >= epoch_steps:
            break
        counts[m] += 1
    while sum(counts.values()) > epoch_steps:  # the max(1, ...) floors overshot
        m = max(counts, key=counts.get)
        counts[m] -= 1
    return counts


def batch_order(counts: dict[str, int], seed: int, epoch: int) -> list[str]:
    """Epoch ``epoch``'s sequence of media types; identical on every rank."""
    order = [m for m in MEDIA if m in counts for _ in range(counts[m])]
    random.Random(derive_seed("vl-order", seed, epoch)).shuffle(order)
    return order


# ---------------------------------------------------------------------- WebDataset streams

def _rows(src: Iterator[dict], *, media: str, caption_sampling: str, source_of: dict[str, int],
          skips: Skips, rate_of: dict[str, float], spread: int,
          seed_parts: tuple = ()) -> Iterator[dict]:
    """Tar samples -> rows ``{"sample", "meta", "captions", "caption_idx", "source"}``.

    ``"all"``: (media, caption) rows drawn by :func:`umt.data.loader_kit.spread_rows` -- one
    random caption per visit of a media, a media visited as often as it has captions -- so that
    the captions of one video do not meet in a batch (they would be VTC false negatives and VTM
    "hard" negatives); ``"paragraph"``: one row, the captions joined; ``"random"``: one row, its
    caption drawn at decode time.
    """
    def rows_of(sample: dict) -> list[dict]:
        try:
            meta = parse_meta(sample)
            kind = media_of(sample)[2]
            if kind != media:
                raise SampleError(f"wrong media: a {kind} in a {media} source")
            caps = captions_of(sample, meta)
            if not caps:
                raise SampleError("no caption")
        except Exception as e:
            skip_sample(skips, sample, e)
            return []
        row = {"sample": sample, "meta": meta, "captions": caps,
               "source": source_of.get(sample.get("__url__", ""), -1)}
        if caption_sampling == "all":
            return [dict(row, caption_idx=i) for i in range(len(caps))]
        if caption_sampling == "paragraph":  # official is_paragraph_retrieval
            return [dict(row, captions=[" ".join(caps)], caption_idx=0)]
        return [dict(row, caption_idx=None)]

    return spread_rows(src, rows_of=rows_of, rate_of=rate_of if caption_sampling == "all" else {},
                       spread=spread, seed_parts=seed_parts)


def _vl_sample(row: dict, *, media: str, decoder, num_frames: int, img_size: int, scale, flip: bool,
               max_pixels: Optional[int], skips: Skips, rng: np.random.Generator) -> dict:
    sample = row["sample"]
    try:
        i = row["caption_idx"]
        if i is None:  # caption_sampling="random": this visit's caption
            i = int(rng.integers(len(row["captions"])))
        caption = clean_caption(row["captions"][i])
        if not caption:
            raise SampleError("empty caption after cleaning")
        data = media_of(sample)[1]
        if media == "image":
            frames = read_image(data, max_pixels)  # [1, H, W, 3]: images are 1-frame clips
        else:
            frames = read_video(data, row["meta"], decoder,
                                lambda n: vl_frame_indices(num_frames, n, "rand", rng),
                                num_frames, max_pixels)
        video = vl_train_transform(frames, img_size, scale, flip, rng)  # [3, T, S, S]
    except Exception as e:  # any malformed field or medium: skip this row, never the run
        return skip_sample(skips, sample, e)
    skips.ok()
    key = sample.get("__key__", "?")
    return {"video": video, "caption": caption, "key": key,
            "sample_id": sample_id(row["source"], key, i), "media_id": media_id(row["source"], key)}


def _collate(rows: list[dict], *, media: str, skips: Skips) -> dict:
    return {"media": media, "video": torch.stack([r["video"] for r in rows]),
            "caption": [r["caption"] for r in rows],
            "sample_id": torch.tensor([r["sample_id"] for r in rows], dtype=torch.long),
            "media_id": torch.tensor([r["media_id"] for r in rows], dtype=torch.long),
            "key": [r["key"] for r in rows], "skipped": dict(skips.take())}


def _webdataset_stream(media: str, sources: list[VLSource], cfg, *, batch_size: int,
                       num_frames: int, img_size: int, seed: int, rank: int, world_size: int,
                       start: int, epoch_batches: int) -> ClipLoader:
    """One media type's batches, local step ``start`` on (a Stage-1 style resampled stream)."""
    urls, weights, source_of, rate_of = [], [], {}, {}
    for src in sources:
        for shard, uri in zip(src.info.shards, src.info.shard_uris()):
            urls.append(uri)
            known = cfg.caption_sampling == "all" and shard.num_captions is not None
            # "all": one row per visit of a media (umt.data.loader_kit.spread_rows), so shards
            # are drawn by their captions per media: rows then come in proportion to captions.
            rate = shard.num_captions / max(1, shard.num_samples) if known else None
            weights.append(float(shard.num_samples if rate is None else rate))
            if rate:
                rate_of[uri] = rate
            source_of[uri] = src.index
    mine = rank_shards(list(range(len(urls))), rank, world_size)
    if not sum(weights[i] for i in mine) > 0:
        raise ValueError(f"rank {rank}'s {media} shards hold no samples")
    skips = Skips()
    sample_fn = partial(_vl_sample, media=media, decoder=get_decoder(cfg.decoder),
                        num_frames=num_frames, img_size=img_size, scale=tuple(cfg.crop_scale),
                        flip=cfg.flip, max_pixels=cfg.max_pixels, skips=skips)

    rows = partial(_rows, media=media, caption_sampling=cfg.caption_sampling,
                   source_of=source_of, skips=skips, rate_of=rate_of,
                   spread=max(cfg.shuffle_buffer, batch_size))
    make_stages = partial(train_stages, skips=skips, sample_fn=sample_fn, rows=rows,
                          shuffle_buffer=cfg.shuffle_buffer, batch_size=batch_size,
                          collate=partial(_collate, media=media, skips=skips))
    stream = TrainStream([urls[i] for i in mine], make_stages, seed=("vl", seed, media),
                         rank=rank, start_step=start, epoch_steps=epoch_batches,
                         weights=[weights[i] for i in mine])
    return ClipLoader(data_loader(stream, cfg.num_workers), start, sources[0].info, epoch_batches)


# ------------------------------------------------------------------------------- synthetic

class _SyntheticStream:
    """Captioned synthetic rows of one media type (videos: 2 captions each; images: 1), an
    exact epoch per ``epoch_batches`` local steps over all ranks; a pure function of
    (seed, media, local step, rank)."""

    num_skipped = 0
    skip_reasons: Counter = Counter()

    def __init__(self, media: str, cfg, *, batch_size: int, num_frames: int, img_size: int,
                 seed: int, rank: int, world_size: int, start: int, epoch_batches: int):
        self.media, self.cfg, self.batch_size = media, cfg, batch_size
        self.num_frames, self.img_size = num_frames, img_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.step, self.epoch_batches = start, epoch_batches
        self.per_media = 2 if media == "video" else 1
        self.rows = synthetic_rows(media, cfg)

    def __iter__(self):
        return self

    def _render(self, index: int) -> tuple[np.ndarray, list[str]]:
        if self.media == "image":
            frame, caption = synthetic.render_image(derive_seed("image", self.seed, index),
                                                    self.img_size)
            return frame, [caption]
        clip_seed = derive_seed("clip", self.seed, index)
        frames, label, _ = synthetic.render_clip(clip_seed, self.num_frames, self.img_size)
        return frames, synthetic.clip_captions(clip_seed, label)

    def __next__(self) -> dict:
        epoch, pos = divmod(self.step, self.epoch_batches)
        perm = np.random.default_rng(derive_seed("synthetic-vl", self.seed, self.media, epoch)
                                     ).permutation(self.rows)
        first = (pos * self.world_size + self.rank) * self.batch_size
        videos, captions, ids, keys, medias = [], [], [], [], []
        for k in range(self.batch_size):
            row = int(perm[(first + k) % self.rows])
            if self.cfg.caption_sampling == "all":
                index, c = divmod(row, self.per_media)
            elif self.cfg.caption_sampling == "paragraph":
                index, c = row, 0
            else:  # one random caption per visit
                index = row
                c = int(np.random.default_rng(derive_seed("synthetic-caption", self.seed, epoch, row)
                                              ).integers(self.per_media))
            frames, caps = self._render(index)
            if self.cfg.caption_sampling == "paragraph":
                caps = [" ".join(caps)]
            videos.append(normalize(to_float(frames)))  # [3, T, S, S]; no augmentation
            captions.append(clean_caption(caps[c]))
            key = f"synthetic-{self.media}-{index:06d}"
            keys.append(key)
            ids.append(sample_id("synthetic", key, c))
            medias.append(media_id("synthetic", key))
        self.step += 1
        return {"media": self.media, "video": torch.stack(videos), "caption": captions,
                "sample_id": torch.tensor(ids, dtype=torch.long),
                "media_id": torch.tensor(medias, dtype=torch.long), "key": keys}


def synthetic_rows(media: str, cfg) -> int:
    """Rows of one synthetic epoch: ``synthetic_size`` clips x 2 captions ("all") or clips;
    ``synthetic_size`` images x 1 caption."""
    per_media = 2 if media == "video" and cfg.caption_sampling == "all" else 1
    return cfg.synthetic_size * per_media


# ------------------------------------------------------------------------------- the loader

class VLLoader:
    """Endless iterator of interleaved video / image batches (see the module docstring).

    ``counts``: batches per epoch and rank of each media type; ``epoch_steps`` their sum;
    ``order(epoch)``: the epoch's media sequence; ``num_skipped`` / ``skip_reasons``: summed
    over the media streams.
    """

    def __init__(self, make_stream, counts: dict[str, int], *, seed: int, start_step: int,
                 sources: list[VLSource]):
        self.counts, self.seed, self.sources = counts, seed, sources
        self.epoch_steps = sum(counts.values())
        self.step = start_step
        self._orders: dict[int, list[str]] = {}
        self.streams = {m: make_stream(m, self.local_step(m, start_step)) for m in counts}

    def order(self, epoch: int) -> list[str]:
        if epoch not in self._orders:
            self._orders = {epoch: batch_order(self.counts, self.seed, epoch)}
        return self._orders[epoch]

    def local_step(self, media: str, step: int) -> int:
        """How many ``media`` batches come before global step ``step``."""
        epoch, pos = divmod(step, self.epoch_steps)
        return epoch * self.counts[media] + self.order(epoch)[:pos].count(media)

    @property
    def num_skipped(self) -> int:
        return sum(s.num_skipped for s in self.streams.values())

    @property
    def skip_reasons(self) -> Counter:
        out: Counter = Counter()
        for s in self.streams.values():
            out.update(s.skip_reasons)
        return out

    def __iter__(self) -> "VLLoader":
        return self

    def __next__(self) -> dict:
        epoch, pos = divmod(self.step, self.epoch_steps)
        media = self.order(epoch)[pos]
        batch = next(self.streams[media])
        batch.update(media=media, step=self.step, epoch=epoch)
        self.step += 1
        return batch


def build_vl_loader(cfg, *, batch_size: int, num_frames: int, img_size: int, seed: int = 0,
                    rank: int = 0, world_size: int = 1, start_step: int = 0) -> VLLoader:
    """Stage-2 training batches for this rank, from global step ``start_step`` on.

    ``cfg`` is a :class:`umt.configs.schema.VLDataConfig`; ``batch_size`` is the per-process
    batch of the media types whose ``video_batch_size`` / ``image_batch_size`` is unset.
    """
    sizes = {"video": cfg.video_batch_size or batch_size, "image": cfg.image_batch_size or batch_size}
    if list(cfg.sources) == ["synthetic"]:
        sources: list[VLSource] = []
        rows = {m: synthetic_rows(m, cfg) for m in MEDIA}
        make = partial(_SyntheticStream, cfg=cfg, num_frames=num_frames, img_size=img_size,
                       seed=seed, rank=rank, world_size=world_size)
    else:
        if "synthetic" in cfg.sources:
            raise ValueError(f"data.sources={list(cfg.sources)}: 'synthetic' cannot be mixed "
                             f"with dataset.json sources")
        sources = describe_sources(list(cfg.sources), cfg.caption_sampling)
        rows = {m: sum(s.rows for s in sources if s.media == m) for m in MEDIA}
        make = partial(_webdataset_stream, cfg=cfg, num_frames=num_frames, img_size=img_size,
                       seed=seed, rank=rank, world_size=world_size)
    counts = epoch_counts(rows, sizes, world_size, cfg.epoch_steps)
    log.info("Stage-2 epoch: %s batches per rank (%s)", sum(counts.values()),
             ", ".join(f"{m} {n} x {sizes[m]}" for m, n in counts.items()))

    def make_stream(media: str, start: int):
        common = dict(batch_size=sizes[media], start=start, epoch_batches=counts[media])
        if sources:
            return make(media, [s for s in sources if s.media == media], **common)
        return make(media, **common)

    return VLLoader(make_stream, counts, seed=seed, start_step=start_step, sources=sources)


__all__ = ["build_vl_loader", "VLLoader", "VLSource", "batch_order", "epoch_counts", "media_id",
           "sample_id"]
