"""The building blocks every WebDataset loader of umt is made of (Stage 1, Stage 2, action,
QA, retrieval): shard sources, pipeline stages, skip accounting and the batch iterator.

Training streams (:class:`TrainStream`, assembled by :func:`train_stages`)::

    shard_stream (with replacement from this rank's slice, seeded per (seed, rank, slot, epoch))
      -> interleave_shards (``open_shards`` shards read at once, each sample from a random one
         of them; each shard through open_streams (umt.storage: boto3 or local files, never a
         ``pipe:`` command) and tar_samples (a corrupt tar is counted and skipped))
      -> [rows: a loader's own rows, e.g. (media, caption) or (video, question): spread_rows]
      -> shuffle_samples (a buffer of undecoded samples)
      -> decode_stage (the loader's sample function: decode + augment; bad samples skipped)
      -> batches (the loader's collate function)

Evaluation pipelines (:func:`eval_pipeline`) read every sample once (:class:`EvalSplit`: whole
shards per reader, or, with fewer shards than readers, a contiguous range of samples per
reader, streaming only the shards it touches), keep this reader's samples, decode and batch them, and hand on the skips counted after the last
batch (:func:`with_trailer`). :class:`ClipLoader` iterates a DataLoader over either, collects
the skip counts that travel with each batch, and restarts workers a decoder crash killed
(:mod:`umt.data.worker_crash`). Epoch and resume semantics: :mod:`umt.data.webdataset_loader`.
"""

from __future__ import annotations

import heapq
import logging
import random
import tarfile
from collections import Counter
from functools import partial
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from umt import storage
from umt.data import dataset_json, worker_crash
from umt.data.decoders import DecodeError
from umt.data.samples import IMAGE_EXTS, VIDEO_EXTS, SampleError
from umt.seeds import derive_seed

log = logging.getLogger(__name__)

# A worker that skips this many samples in a row is reading a dataset that is broken as a whole
# (wrong decoder, every shard unreadable): stop with a clear error instead of spinning forever.
MAX_CONSECUTIVE_SKIPS = 500
# Decoded pixels per sample (width x height x frames) above which a sample is refused before it
# is decoded; the number is sharding's per-frame limit (TranscodeSettings.max_pixels).
DEFAULT_MAX_PIXELS = 8192 * 8192


def worker_slot() -> tuple[int, int]:
    """``(this DataLoader worker's id, number of workers)``; ``(0, 1)`` outside a worker."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class Skips:
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


def first_media(info: dataset_json.DatasetInfo) -> str:
    """The media type of a dataset.json without the ``media`` summary: its first sample's."""
    for uri in info.shard_uris():
        try:
            with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tf:
                for member in tf:
                    ext = member.name.rsplit(".", 1)[-1].lower()
                    if ext in VIDEO_EXTS:
                        return "video"
                    if ext in IMAGE_EXTS:
                        return "image"
        except (FileNotFoundError, tarfile.TarError) as e:
            log.warning("cannot look into %s (%s); trying the next shard", uri, e)
    raise ValueError(f"{info.location}: no shard holds a video or image")


def open_streams(src: Iterator[dict], skips: Skips) -> Iterator[dict]:
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


def tar_samples(src: Iterator[dict], skips: Skips) -> Iterator[dict]:
    """``{"url", "stream"}`` -> WebDataset samples ``{"__key__", "__url__", <ext>: bytes}``."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(src, handler=skips.handler), handler=skips.handler)


def interleave_shards(src: Iterator[dict], *, skips: Skips, width: int,
                      seed_parts: tuple) -> Iterator[dict]:
    """Samples of ``width`` distinct shards of ``src`` at once: each next sample comes from a
    random one of the open shards, and a finished shard is replaced by the next shard of
    ``src`` that is not open already (a draw of an open shard is passed over: two copies of
    one shard read side by side would put each sample next to itself).

    Why: a shuffle buffer can only mix what passed through it; fed one shard after another it
    holds one or two shards' samples. Shards packed in a sorted order (``umt shard
    --no-shuffle`` of a ``<root>/<class>/`` folder, or data sharded before the shuffle) would
    then give batches of 1-2 classes. Reading ``width`` shards at once widens the window by
    ``width`` at the cost of ``width`` open streams per worker. ``width`` must not exceed the
    number of distinct shards ``src`` draws (:class:`TrainStream` caps it).
    """
    if width <= 1:
        yield from tar_samples(open_streams(src, skips), skips)
        return
    rng = random.Random(derive_seed("interleave", *seed_parts))

    def draw(open_urls: set) -> Optional[dict]:
        for url in src:
            if url["url"] not in open_urls:
                return url
        return None  # a finite source (tests)

    def shard(url: dict) -> Iterator[dict]:
        return tar_samples(open_streams(iter([url]), skips), skips)

    active: list[tuple[str, Iterator[dict]]] = []
    try:
        for _ in range(width):
            url = draw({u for u, _ in active})
            if url is None:
                break
            active.append((url["url"], shard(url)))
        while active:
            i = rng.randrange(len(active))
            try:
                yield next(active[i][1])
            except StopIteration:
                url = draw({u for j, (u, _) in enumerate(active) if j != i})
                if url is None:  # a finite source: drain the others
                    active.pop(i)
                else:
                    active[i] = (url["url"], shard(url))
    finally:
        for _, it in active:
            if hasattr(it, "close"):
                it.close()


def spread_rows(src: Iterator[dict], *, rows_of: Callable[[dict], list], rate_of: dict,
                spread: int, seed_parts: tuple) -> Iterator[dict]:
    """One row per media visit, not every row of a media at once: the rows of one media never
    enter the shuffle buffer together, so a batch rarely holds one media twice.

    ``rows_of(sample)``: the candidate rows of a tar sample (one per caption or question; ``[]``
    skips it). A visit emits ``x = len(rows) / rate`` rows in expectation (``floor(x)`` plus one
    with probability ``frac(x)``), distinct random ones, where ``rate = rate_of[shard url]`` is
    the shard's mean rows per sample (1 visit -> 1 row when it is unknown). Drawing shards in
    proportion to their ``rate`` (the loaders' shard weights) then gives every row the
    frequency it has in an epoch of all rows (the official row-level sampling: each (media,
    caption) pair once per epoch, in a global shuffle), while a media with as many rows as its
    shard's mean -- every media of a set with a fixed caption count -- yields one row per visit.
    Extra rows of one visit (a media with more captions than its shard's mean) are held back
    ``spread`` rows each (a shuffle buffer's length), not emitted next to each other.
    """
    rng = random.Random(derive_seed("rows", *seed_parts))
    later: list = []  # heap of (release position, sequence, row)
    n = seq = 0
    for sample in src:
        rows = rows_of(sample)
        if rows:
            rate = rate_of.get(sample.get("__url__"))
            x = len(rows) / rate if rate else 1.0
            count = int(x) + (rng.random() < x - int(x))
            picks = rng.sample(range(len(rows)), min(count, len(rows)))
            picks += [rng.randrange(len(rows)) for _ in range(count - len(picks))]
            for k, p in enumerate(picks):
                if k == 0:
                    yield rows[p]
                    n += 1
                else:
                    heapq.heappush(later, (n + k * spread, seq, rows[p]))
                    seq += 1
        while later and later[0][0] <= n:
            yield heapq.heappop(later)[2]
            n += 1
    while later:  # a finite source (tests)
        yield heapq.heappop(later)[2]


def shuffle_samples(src: Iterator[dict], bufsize: int, seed_parts: tuple) -> Iterator[dict]:
    """WebDataset's shuffle buffer of ``bufsize`` samples, seeded by ``seed_parts``."""
    from webdataset.filters import _shuffle as wds_shuffle

    if bufsize <= 1:
        return src
    rng = random.Random(derive_seed("shuffle", *seed_parts))
    return wds_shuffle(src, bufsize=bufsize, initial=min(bufsize, 100), rng=rng)


# --------------------------------------------------------------------------------- decoding

def skip_sample(skips: Skips, sample: dict, e: Exception) -> dict:
    """Count and log one unusable sample (with its shard and key); the run goes on."""
    reason = str(e) if isinstance(e, (SampleError, DecodeError)) else \
        f"unexpected error: {type(e).__name__}: {e}"[:300]
    skips.skip(reason, f"{sample.get('__url__', '')}:{sample.get('__key__', '?')}")
    return {}


def decode_stage(src: Iterator[dict], fn, rng_parts: tuple, per_worker: bool = True,
                 skips: Optional[Skips] = None) -> Iterator[dict]:
    """``fn(sample, rng=...)`` for every sample; empty results (skipped samples) are dropped.

    In a DataLoader worker the sample being decoded is noted, so that a decoder crash that
    kills the worker costs that sample only (:mod:`umt.data.worker_crash`); samples that
    crashed a worker before are skipped, counted by ``skips`` (default: ``fn``'s own).
    """
    if per_worker:
        rng_parts = rng_parts + (worker_slot()[0],)
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


# ------------------------------------------------------------------------------ the iterator

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
        if not isinstance(stream, TrainStream):
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
        self._loader = data_loader(stream, self._loader.num_workers, watch)


def _worker_message(text: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker, whose
    text DataLoader prefixes with the worker's whole traceback."""
    marker = "StorageError: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


TRAILER = "_skips_only"


def with_trailer(src: Iterator[dict], skips: Skips) -> Iterator[dict]:
    """Pass batches through, then hand on the skips counted after the last batch (a finite
    evaluation pass would otherwise lose them: counts travel with batches)."""
    yield from src
    yield {"skipped": dict(skips.take()), TRAILER: True}


def data_loader(pipeline, num_workers: int, watch: Optional[worker_crash.DecodeWatch] = None):
    """A DataLoader over an iterable pipeline that yields whole batches, its workers watched
    for decoder crashes and hung decodes (:mod:`umt.data.worker_crash`)."""
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


class TrainStream(torch.utils.data.IterableDataset):
    """The training pipeline of one DataLoader worker, rebuilt (re-seeded) at every epoch.

    Worker ``w`` of ``W`` makes the batches of steps ``start_step + w, start_step + w + W, ...``
    (DataLoader's round-robin order); its slot ``(start_step + w) % W`` -- the same for the same
    steps in any run -- and the epoch seed everything it draws. ``make_stages(parts,
    num_shards=n)`` builds the stages after the shard source (:func:`train_stages`); ``n`` is
    the number of distinct shards it can draw (so many can be open at once, at most).
    """

    def __init__(self, urls: list[str], make_stages, *, seed: Any, rank: int, start_step: int,
                 epoch_steps: int, weights: Optional[list[float]] = None):
        super().__init__()
        for u in urls:
            storage.check_uri(u)  # rejects pipe: and other schemes, before any worker starts
        self.urls, self.make_stages, self.weights = urls, make_stages, weights
        self.seed, self.rank, self.start_step, self.epoch_steps = seed, rank, start_step, epoch_steps
        # Distinct shards the stream can draw: the most that can be open at once.
        self.num_shards = len({u for i, u in enumerate(urls) if weights is None or weights[i] > 0})

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_slot()
        slot = (self.start_step + worker) % num_workers
        step = self.start_step + worker
        while True:
            epoch = step // self.epoch_steps
            end = (epoch + 1) * self.epoch_steps
            parts: tuple = (self.seed, self.rank, slot, epoch)
            if self.start_step > epoch * self.epoch_steps:  # resumed inside this epoch
                parts += ("resume", self.start_step)
            src: Any = shard_stream(self.urls, parts, self.weights)
            for stage in self.make_stages(parts, num_shards=self.num_shards):
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


# Shards one training stream reads at once (interleave_shards): 4 x 1000-sample shards feed the
# default 1000-sample shuffle buffer from 4 places of the data set.
OPEN_SHARDS = 4


def train_stages(parts: tuple, *, skips: Skips, sample_fn: Callable, shuffle_buffer: int,
                 batch_size: int, collate: Callable, rows: Optional[Callable] = None,
                 open_shards: int = OPEN_SHARDS, num_shards: Optional[int] = None) -> list:
    """The stages of one training stream after its shard source, for epoch seed ``parts``
    (a ``TrainStream``'s ``make_stages``, bound with ``functools.partial``).

    ``sample_fn(sample, rng=...)`` decodes and augments one sample (``{}``: skipped);
    ``rows(samples, seed_parts=parts)`` optionally turns tar samples into rows before the
    shuffle buffer (:func:`spread_rows`: (media, caption) or (video, question) rows); ``collate(list)`` makes a batch
    of ``batch_size``; incomplete batches are dropped (the stream is endless). ``open_shards``
    distinct shards are read at once (:func:`interleave_shards`), at most ``num_shards`` (the
    stream's distinct shards).
    """
    import webdataset as wds

    width = open_shards if num_shards is None else min(open_shards, num_shards)
    stages = [partial(interleave_shards, skips=skips, width=width, seed_parts=parts)]
    if rows is not None:
        stages.append(partial(rows, seed_parts=parts))
    return stages + [partial(shuffle_samples, bufsize=shuffle_buffer, seed_parts=parts),
                     partial(decode_stage, rng_parts=parts, fn=sample_fn, per_worker=False),
                     wds.batched(batch_size, collation_fn=collate, partial=False)]


# ---------------------------------------------------------------------------------- evaluation

class EvalSplit(torch.utils.data.IterableDataset):
    """Every sample once over ``world_size`` ranks x their DataLoader workers (the readers).

    At least as many shards as readers: shards are split over the readers, whole. Fewer: the
    dataset's positions (``sizes``: samples per shard, from dataset.json) are cut into one
    contiguous range per reader, and a reader streams only the shards its range touches (one
    or two) and stops after its range -- not every shard, as a reader keeping every N-th
    sample of the whole set must. Readers keep equal counts (to one sample) either way.
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, sizes: list[int]):
        super().__init__()
        for u in urls:
            storage.check_uri(u)
        if len(sizes) != len(urls):
            raise ValueError(f"{len(sizes)} shard sizes for {len(urls)} shards")
        self.urls, self.rank, self.world_size = urls, rank, world_size
        self.offsets, total = {}, 0
        for url, n in zip(urls, sizes):
            self.offsets[url] = total
            total += int(n)
        self.sizes, self.total = [int(n) for n in sizes], total

    def plan(self) -> tuple[list[str], Optional[int], Optional[int]]:
        """``(shards this reader streams, lo, hi)``: it keeps dataset positions in ``[lo, hi)``
        (``None``: whole shards). Called in the reader's process (a DataLoader worker)."""
        worker, num_workers = worker_slot()
        me, readers = self.rank * num_workers + worker, self.world_size * num_workers
        if len(self.urls) >= readers:
            return list(self.urls[me::readers]), None, None
        lo, hi = me * self.total // readers, (me + 1) * self.total // readers
        return [u for u, n in zip(self.urls, self.sizes)
                if lo < hi and self.offsets[u] < hi and self.offsets[u] + n > lo], lo, hi

    def __iter__(self):
        for url in self.plan()[0]:
            yield {"url": url}

    def select(self, src: Iterator[dict]) -> Iterator[tuple[dict, int]]:
        """``(sample, dataset position)`` of this reader's samples of ``src`` (its shards'
        samples), by position in the shard: the same in every reader, whatever it skips."""
        shards, lo, hi = self.plan()
        last = shards[-1] if shards else None
        url, pos = None, 0
        for sample in src:
            if sample.get("__url__") != url:
                url, pos = sample.get("__url__"), 0
            index = self.offsets.get(url, 0) + pos
            pos += 1
            if lo is None or lo <= index < hi:
                yield sample, index
            elif index >= hi and url == last:
                return  # past this reader's range: the rest of the shard is not streamed


def eval_select(src: Iterator[dict], split: EvalSplit) -> Iterator[dict]:
    """This reader's samples (:meth:`EvalSplit.select`)."""
    for sample, _ in split.select(src):
        yield sample


def eval_pipeline(split: EvalSplit, *, skips: Skips, sample_fn: Callable, batch_size: int,
                  collate: Callable, select: Optional[Callable] = None):
    """One evaluation pass over ``split``: open shards -> tar samples -> ``select`` (default
    :func:`eval_select`) -> ``sample_fn`` -> batches of ``batch_size`` (the last may be smaller)
    -> the skips counted after the last batch (:func:`with_trailer`)."""
    import webdataset as wds

    return wds.DataPipeline(
        split, partial(open_streams, skips=skips), partial(tar_samples, skips=skips),
        select if select is not None else partial(eval_select, split=split),
        partial(decode_stage, rng_parts=(0,), fn=sample_fn),
        wds.batched(batch_size, collation_fn=collate, partial=True),
        partial(with_trailer, skips=skips))
