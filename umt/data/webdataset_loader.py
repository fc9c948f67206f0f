"""Stream clips from WebDataset shards (local or s3://) described by a ``dataset.json``.

Training (``build_webdataset_loader``, behind ``umt.data.stream.build_pretrain_loader``), the
open_clip recipe adapted to video::

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

import logging
import random
from collections import Counter
from functools import partial
from typing import Any, Iterator, Optional

import numpy as np
import torch

from umt import storage
from umt.seeds import derive_seed
from umt.data import dataset_json, worker_crash
from umt.data.decoders import DecodeError, get_decoder
from umt.data.samples import (SampleError, captions_of, label_of, media_of, parse_meta,
                              read_image, read_video)
from umt.data.sampling import segment_indices
from umt.data.transforms import test_transforms, train_transform

log = logging.getLogger(__name__)

# A worker that skips this many samples in a row is reading a dataset that is broken as a whole
# (wrong decoder, every shard unreadable): stop with a clear error instead of spinning forever.
MAX_CONSECUTIVE_SKIPS = 500
# Decoded pixels per sample (width x height x frames) above which a sample is refused before it
# is decoded; the number is sharding's per-frame limit (TranscodeSettings.max_pixels).
DEFAULT_MAX_PIXELS = 8192 * 8192


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Skips:
    """Skipped-sample count of one loader in one process, handed on with each batch.

    One per loader (not module-global): two loaders in one process, or a loader created after
    another one failed, must not mix their counts. DataLoader workers each get their own copy.
    """

    def __init__(self):
        self.pending: Counter = Counter()
        self.consecutive = 0

    def skip(self, reason: str, where: str = "") -> None:
        self.pending[reason.split(":")[0][:80]] += 1
        self.consecutive += 1
        log.warning("skipping corrupt sample %s: %s", where, reason)
        if self.consecutive >= MAX_CONSECUTIVE_SKIPS:
            raise RuntimeError(f"{self.consecutive} consecutive samples failed (last: {where}: "
                               f"{reason}); the dataset or the decoder is broken as a whole")

    def ok(self) -> None:
        self.consecutive = 0

    def take(self) -> Counter:
        out, self.pending = self.pending, Counter()
        return out

    def handler(self, exn: Exception) -> bool:
        """WebDataset exception handler: count, log, continue (open_clip's log_and_continue)."""
        self.skip(f"corrupt shard: {type(exn).__name__}: {exn}"[:300], "")
        return True


# --------------------------------------------------------------------------------- shard sources

def rank_shards(urls: list[str], rank: int, world_size: int) -> list[str]:
    """This rank's shard slice (``shards[rank::world_size]``); all shards when there are fewer
    shards than ranks (the per-rank seeds then keep the sequences different)."""
    return list(urls[rank::world_size]) if len(urls) >= world_size else list(urls)


def shard_stream(urls: list[str], seed_parts: tuple,
                 weights: Optional[list[float]] = None) -> Iterator[dict]:
    """Endless ``{"url"}`` drawn with replacement from ``urls``, seeded by ``seed_parts``
    (in proportion to ``weights`` when given: shards of several datasets differ in size).

    Every DataLoader worker draws from the rank's whole slice (open_clip's resampled shards)
    with its own seed. Splitting the slice among workers instead gives uneven exposure when the
    counts do not divide (3 shards over 2 workers: one shard read twice as often) and leaves a
    worker with a single shard reading it over and over.
    """
    for u in urls:
        storage.check_uri(u)  # rejects pipe: and other schemes
    rng = random.Random(derive_seed("shards", *seed_parts))
    if weights is not None:
        if len(weights) != len(urls) or not sum(weights) > 0:
            raise ValueError(f"shard weights {weights[:8]} do not fit {len(urls)} shards")
        while True:
            yield {"url": rng.choices(urls, weights)[0]}
    while True:
        yield {"url": rng.choice(urls)}


def _open_streams(src: Iterator[dict], skips: _Skips) -> Iterator[dict]:
    """``{"url"}`` -> ``{"url", "stream"}`` through umt.storage (boto3 for s3://)."""
    for sample in src:
        url = sample["url"]
        try:
            stream = storage.open_read(url)
        except storage.StorageError:
            # Credentials, bucket or endpoint (after botocore's retries): every other shard
            # would fail the same way, so stop with the message instead of skipping them all.
            raise
        except Exception as e:  # missing / unreadable shard: skip it, as a corrupt tar is
            skips.handler(e)
            continue
        try:
            yield {"url": url, "stream": stream}
        finally:
            stream.close()  # the consumer has read the whole tar when it asks for the next


def _samples(src: Iterator[dict], skips: _Skips) -> Iterator[dict]:
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(src, handler=skips.handler), handler=skips.handler)


def _shuffle(src: Iterator[dict], bufsize: int, seed_parts: tuple) -> Iterator[dict]:
    from webdataset.filters import _shuffle as wds_shuffle

    if bufsize <= 1:
        return src
    rng = random.Random(derive_seed("shuffle", *seed_parts))
    return wds_shuffle(src, bufsize=bufsize, initial=min(bufsize, 100), rng=rng)


# ------------------------------------------------------------------------------------ decoding

def read_frames(sample: dict, meta: dict, decoder, num_frames: int, *, train: bool,
                rng: Optional[np.random.Generator] = None, clip_idx: int = 0,
                num_clips: int = 1, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decode one clip of a sample: uint8 ``[T, H, W, 3]`` (an image is repeated T times).

    ``max_pixels``: refuse (:class:`SampleError`) a sample that would decode more pixels
    (frame size x frames, checked on the header before decoding).
    """
    ext, data, kind = media_of(sample)
    if kind == "image":
        # A broadcast view, not T copies: the crop is taken before anything is materialised.
        image = read_image(data, max_pixels)  # [1, H, W, 3]
        return np.broadcast_to(image, (num_frames,) + image.shape[1:])

    def pick(length: int) -> list[int]:
        return segment_indices(length, num_frames, train=train, rng=rng, clip_idx=clip_idx,
                               num_clips=num_clips)

    return read_video(data, meta, decoder, pick, num_frames, max_pixels)


def _skip(skips: "_Skips", sample: dict, e: Exception) -> dict:
    """Count and log one unusable sample (with its shard and key); the run goes on."""
    reason = str(e) if isinstance(e, (SampleError, DecodeError)) else \
        f"unexpected error: {type(e).__name__}: {e}"[:300]
    skips.skip(reason, f"{sample.get('__url__', '')}:{sample.get('__key__', '?')}")
    return {}


def _train_sample(sample: dict, *, decoder, num_frames: int, img_size: int, scales, flip: bool,
                  skips: _Skips, rng: np.random.Generator, num_classes: int = 0,
                  max_pixels: Optional[int] = None) -> dict:
    try:
        meta = parse_meta(sample)
        label = label_of(sample, meta, num_classes)
        captions = captions_of(sample, meta) or [""]
        frames = read_frames(sample, meta, decoder, num_frames, train=True, rng=rng,
                             max_pixels=max_pixels)
        video = train_transform(frames, img_size, scales, flip, rng)  # [3, T, S, S]
    except Exception as e:  # any malformed field or medium: skip this sample, never the run
        return _skip(skips, sample, e)
    skips.ok()
    return {"video": video, "label": label,
            "caption": captions[int(rng.integers(len(captions)))], "key": sample.get("__key__", "?")}


def _collate(samples: list[dict], skips: _Skips) -> dict:
    return {"video": torch.stack([s["video"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "caption": [s["caption"] for s in samples], "key": [s["key"] for s in samples],
            "skipped": dict(skips.take())}


def _decode_stage(src: Iterator[dict], fn, rng_parts: tuple, per_worker: bool = True,
                  skips: Optional[_Skips] = None) -> Iterator[dict]:
    """``fn(sample, rng=...)`` for every sample; empty results (skipped samples) are dropped.

    In a DataLoader worker the sample being decoded is noted, so that a decoder crash that
    kills the worker costs that sample only (:mod:`umt.data.worker_crash`); samples that
    crashed a worker before are skipped, counted by ``skips`` (default: ``fn``'s own).
    """
    if per_worker:
        rng_parts = rng_parts + (_worker()[0],)
    rng = np.random.default_rng([derive_seed("decode", *rng_parts)])
    watch = worker_crash.current()
    skips = skips if skips is not None else getattr(fn, "keywords", {}).get("skips")
    for sample in src:
        if watch is None:
            out = fn(sample, rng=rng)
        else:
            name = f"{sample.get('__url__', '')}:{sample.get('__key__', '?')}"
            if name in watch.poisoned:
                if skips is not None:
                    skips.skip(watch.poisoned[name] + ": on an earlier attempt", name)
                continue
            watch.note(name)
            try:
                out = fn(sample, rng=rng)
            finally:
                watch.done()
        if out:
            yield out


class ClipLoader:
    """Endless iterator of batches with skip statistics (see module docstring)."""

    def __init__(self, loader, start_step: int, info: dataset_json.DatasetInfo,
                 epoch_steps: Optional[int] = None):
        self._loader = loader
        self.epoch_steps = epoch_steps
        self._it: Optional[Iterator] = None
        self.step = start_step
        self.info = info
        self.num_skipped = 0
        self.skip_reasons: Counter = Counter()
        self.crashes = 0  # DataLoader workers lost to decoder crashes

    def __iter__(self) -> "ClipLoader":
        return self

    def __next__(self) -> dict:
        while True:
            if self._it is None:
                self._it = iter(self._loader)
                worker_crash.guard_sigchld()  # a worker death is handled here, not mid-step
            error = worker_crash.take_pending()  # announced while the training step ran
            announced = error is not None
            if error is None:
                try:
                    with worker_crash.waiting():
                        batch = next(self._it)  # training: endless, resampled shards never run out
                except StopIteration:  # the end of an evaluation pass
                    raise
                except storage.StorageError as e:
                    raise storage.StorageError(_worker_message(str(e))) from None
                except Exception as e:
                    error = e
            if error is not None:
                # A worker that died handing over a batch breaks the pipe before it is reaped.
                wait = 2.0 if isinstance(error, (EOFError, OSError)) else 0.0
                dead = (worker_crash.dead_workers(self._it, wait) if self._loader.num_workers
                        else [])
                if dead:
                    self._after_worker_crash(error, dead)
                    worker_crash.take_pending()  # the same death, announced again
                elif not announced and not worker_crash.is_death_notice(error):
                    raise error
                # else: the death of another loader's worker (an evaluation during training):
                # that loader finds its dead worker itself (DataLoader checks every 5 s).
                continue
            skipped = batch.pop("skipped", {})
            self.skip_reasons.update(skipped)
            self.num_skipped += sum(skipped.values())
            if not batch.pop(TRAILER, False):
                break
        worker_step = batch.pop("worker_step", self.step)
        if worker_step != self.step:  # the round-robin assumption behind epochs broke
            raise RuntimeError(f"loader out of order: expected step {self.step}, got {worker_step}")
        batch["step"] = self.step
        if self.epoch_steps:
            batch["epoch"] = self.step // self.epoch_steps
        self.step += 1
        return batch

    def _after_worker_crash(self, error: Exception, pids: list[int]) -> None:
        """DataLoader workers ``pids`` died (a decoder crash, see :mod:`umt.data.worker_crash`):
        skip the samples they were decoding and restart the workers at this step (training), or
        stop with the samples' names (evaluation)."""
        watch = getattr(self._loader, "umt_watch", None)
        culprits = watch.culprits(pids) if watch is not None else []
        if hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it = None
        stream = self._loader.dataset
        if not culprits:
            raise RuntimeError(f"DataLoader worker(s) {pids} died while not decoding a sample "
                               f"({type(error).__name__}: {error})") from error
        names = ", ".join(name for name, _ in culprits)
        if not isinstance(stream, _TrainStream):
            what = ("its decode took longer than the limit, "
                    f"{watch.timeout_s:.0f} s (UMT_DECODE_TIMEOUT_S)"
                    if any(reason == worker_crash.HUNG for _, reason in culprits)
                    else "the decoder crashed on it")
            raise RuntimeError(f"a DataLoader worker died while decoding {names} ({what}); "
                               f"remove the sample from its shard, or read it with "
                               f"data.decoder=pyav") from None
        self.crashes += 1
        if self.crashes > worker_crash.MAX_WORKER_CRASHES:
            raise RuntimeError(f"DataLoader workers died {self.crashes} times (last while decoding "
                               f"{names}): the decoder is broken as a whole; try "
                               f"data.decoder=pyav") from None
        for name, reason in culprits:
            log.warning("skipping corrupt sample %s: %s; restarting the loader's workers at "
                        "step %d", name, reason, self.step)
            self.skip_reasons[reason] += 1
        self.num_skipped += len(culprits)
        watch.poisoned.update(culprits)
        stream.start_step = self.step  # the new workers make this step first
        self._loader = _data_loader(stream, self._loader.num_workers, watch)


def _worker_message(text: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker, whose
    text DataLoader prefixes with the worker's whole traceback."""
    marker = "StorageError: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


TRAILER = "_skips_only"


def with_trailer(src: Iterator[dict], skips: "_Skips") -> Iterator[dict]:
    """Pass batches through, then hand on the skips counted after the last batch (a finite
    evaluation pass would otherwise lose them: counts travel with batches)."""
    yield from src
    yield {"skipped": dict(skips.take()), TRAILER: True}


def _data_loader(pipeline, num_workers: int, watch: Optional[worker_crash.DecodeWatch] = None):
    if num_workers > 0 and watch is None:
        watch = worker_crash.DecodeWatch()
    loader = torch.utils.data.DataLoader(
        pipeline, batch_size=None, num_workers=num_workers,
        # Workers hold decoders, S3 connections and shuffle buffers: keep them across iterators.
        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=watch.install if watch is not None else None)
    loader.umt_watch = watch  # what ClipLoader reads after a worker died
    if watch is not None:
        watch.start_watchdog()  # a hung decode: its worker is stopped, then handled as a crash
    return loader


def default_epoch_steps(num_samples: int, batch_size: int, world_size: int) -> int:
    """One pass over the data in steps: ``num_samples // global batch``, at least 1."""
    return max(1, int(num_samples) // max(1, batch_size * world_size))


class _TrainStream(torch.utils.data.IterableDataset):
    """The training pipeline of one DataLoader worker, rebuilt (re-seeded) at every epoch.

    Worker ``w`` of ``W`` makes the batches of steps ``start_step + w, start_step + w + W, ...``
    (DataLoader's round-robin order); its slot ``(start_step + w) % W`` -- the same for the same
    steps in any run -- and the epoch seed everything it draws.
    """

    def __init__(self, urls: list[str], make_stages, *, seed: Any, rank: int, start_step: int,
                 epoch_steps: int, weights: Optional[list[float]] = None):
        super().__init__()
        for u in urls:
            storage.check_uri(u)  # rejects pipe: and other schemes, before any worker starts
        self.urls, self.make_stages, self.weights = urls, make_stages, weights
        self.seed, self.rank, self.start_step, self.epoch_steps = seed, rank, start_step, epoch_steps

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        slot = (self.start_step + worker) % num_workers
        step = self.start_step + worker
        while True:
            epoch = step // self.epoch_steps
            end = (epoch + 1) * self.epoch_steps
            parts: tuple = (self.seed, self.rank, slot, epoch)
            if self.start_step > epoch * self.epoch_steps:  # resumed inside this epoch
                parts += ("resume", self.start_step)
            src: Any = shard_stream(self.urls, parts, self.weights)
            for stage in self.make_stages(parts):
                src = stage(src)
            try:
                for _ in range(step, end, num_workers):
                    batch = next(src)
                    batch["worker_step"] = step
                    yield batch
                    step += num_workers
            finally:
                if hasattr(src, "close"):
                    src.close()  # ends the generator chain: open shard streams are closed


def build_webdataset_loader(cfg, *, batch_size: int, num_frames: int, img_size: int, seed: int = 0,
                            rank: int = 0, world_size: int = 1, start_step: int = 0) -> ClipLoader:
    """Training batches from ``cfg.source`` (dataset.json path or s3:// URI) for this rank.

    Yields ``{"video": float [B, 3, T, H, W] (ImageNet-normalised), "label": long [B] (-1 when
    unlabelled), "caption": list[str], "key": list[str], "step": int, "epoch": int}`` forever.
    """
    import webdataset as wds

    info = dataset_json.load(cfg.source)
    decoder = get_decoder(getattr(cfg, "decoder", "decord"))
    epoch_steps = getattr(cfg, "epoch_steps", None) or default_epoch_steps(
        info.num_samples, batch_size, world_size)
    if epoch_steps < 1:
        raise ValueError(f"epoch_steps must be >= 1, got {epoch_steps}")
    skips = _Skips()
    sample_fn = partial(_train_sample, decoder=decoder, num_frames=num_frames, skips=skips,
                        img_size=img_size, scales=list(cfg.crop_scales), flip=cfg.flip,
                        num_classes=len(info.classes),
                        max_pixels=getattr(cfg, "max_pixels", DEFAULT_MAX_PIXELS))

    def make_stages(parts: tuple) -> list:
        return [partial(_open_streams, skips=skips), partial(_samples, skips=skips),
                partial(_shuffle, bufsize=cfg.shuffle_buffer, seed_parts=parts),
                partial(_decode_stage, rng_parts=parts, fn=sample_fn, per_worker=False),
                wds.batched(batch_size, collation_fn=partial(_collate, skips=skips), partial=False)]

    stream = _TrainStream(rank_shards(info.shard_uris(), rank, world_size), make_stages,
                          seed=seed, rank=rank, start_step=start_step, epoch_steps=epoch_steps)
    return ClipLoader(_data_loader(stream, cfg.num_workers), start_step, info, epoch_steps)


# ---------------------------------------------------------------------------------- evaluation

class _EvalSplit(torch.utils.data.IterableDataset):
    """Every shard once; shards split over ranks x workers when there are enough of them,
    otherwise every reader scans all shards and keeps every N-th sample."""

    def __init__(self, urls: list[str], rank: int, world_size: int):
        super().__init__()
        for u in urls:
            storage.check_uri(u)
        self.urls, self.rank, self.world_size = urls, rank, world_size

    def __iter__(self):
        worker, num_workers = _worker()
        readers, me = self.world_size * num_workers, self.rank * num_workers + worker
        for url in self.urls[me::readers] if len(self.urls) >= readers else self.urls:
            yield {"url": url}


def _eval_select(src: Iterator[dict], split: _EvalSplit) -> Iterator[dict]:
    worker, num_workers = _worker()
    readers = split.world_size * num_workers
    me = split.rank * num_workers + worker
    whole_shards = len(split.urls) >= readers
    for i, sample in enumerate(src):
        if whole_shards or i % readers == me:
            yield sample


def _eval_sample(sample: dict, *, decoder, num_frames: int, img_size: int, num_clips: int,
                 num_crops: int, skips: _Skips, num_classes: int = 0,
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
        return _skip(skips, sample, e)
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
    import webdataset as wds

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
    split = _EvalSplit(info.shard_uris(), rank, world_size)
    skips = _Skips()
    pipeline = wds.DataPipeline(
        split, partial(_open_streams, skips=skips), partial(_samples, skips=skips),
        partial(_eval_select, split=split),
        partial(_decode_stage, rng_parts=(0,),
                fn=partial(_eval_sample, decoder=get_decoder(decoder), num_frames=num_frames,
                           img_size=img_size, num_clips=num_clips, num_crops=num_crops,
                           skips=skips, num_classes=len(info.classes), max_pixels=max_pixels)),
        wds.batched(batch_size, collation_fn=partial(_collate, skips=skips), partial=True),
        partial(with_trailer, skips=skips),
    )
    return ClipLoader(_data_loader(pipeline, num_workers), 0, info)
