"""``umt shard``: validate, transcode and pack videos into WebDataset shards + ``dataset.json``.

    umt shard --input s3://raw/k400/train.csv --output s3://data/k400-train \\
        --short-side 320 --max-fps 30 --samples-per-shard 1000 --workers 16

Pipeline: read the manifest (all its errors surface before any work) -> worker processes each
fetch one input, test-decode it and transcode it (``umt.data.transcode``) -> the main process
packs the results, in a seeded shuffle of the manifest (:func:`shuffled`; ``shuffle=False``:
manifest order), into ``shard-NNNNNN.tar`` files (``<key>.mp4|jpg``,
``<key>.json``, ``<key>.txt``, ``<key>.cls``) -> uploads them (background thread for S3) ->
writes ``dataset.json``.

Guarantees:
- Bad inputs never crash the step; each is recorded with its reason. A decoder that kills its
  worker process (decord segfaults on some files) or hangs past ``item_timeout`` takes the
  whole worker pool down with it: the pool is killed and restarted, the input at the head of
  the queue is re-run alone in a fresh process (so a crash or hang is blamed on it only when it
  is the culprit) and the other queued inputs are resubmitted. Only the culprit is recorded as
  failed; the cost is the restart plus redoing the queued work.
- Keys are content hashes, tars have fixed mtimes and the packing order is a function of the
  sample ids and the seed only, so a re-run produces the same shards.
- Batch diversity: a ``<root>/<class>/`` folder lists videos class by class; packed in that
  order, every shard would hold 1-2 classes and a training batch drawn from a few open shards
  would too. The shuffle makes every shard a random draw of the whole set, as a global sampler's
  batches are (the official code's ``DistributedSampler``).
- Resumable: every finished shard gets a ``shard-NNNNNN_stats.json`` *after* its tar is in place;
  a re-run re-verifies each (size and sha256 locally, size and ETag on S3) and continues after
  the last good one. Tars appear under their final name only when complete (rename / S3 PUT).
- The step fails (:class:`ShardingFailed`) only when the failure rate exceeds the limit; then
  ``failures.json`` lists every failure and no ``dataset.json`` is written.
- ``part=Part(I, N)`` shards only the inputs assigned to part I of N, into its own folder, and
  writes a part manifest instead of ``dataset.json`` (:mod:`umt.data.shard_parts`: the
  assignment, its guarantees, the merge).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Optional

import umt
from umt import storage
from umt.data import dataset_json, shard_parts
from umt.data.downstream import ANSWER_LIST, sidecar_answer_list
from umt.data.manifest import Item, Manifest, load_manifest
from umt.data.shard_output import (  # noqa: F401  (SHARD_PATTERN, STATS_SUFFIX: re-exported)
    SHARD_PATTERN,
    STATS_SUFFIX,
    OpenShard,
    ShardSink,
    remove_stale,
    sample_record,
    verify_stats,
)
from umt.data.shard_parts import Part
from umt.data.transcode import (
    InputError,
    TranscodeSettings,
    check_video,
    process_image,
    transcode_video,
)

log = logging.getLogger(__name__)

DEFAULT_SAMPLES_PER_SHARD = 1000


class ShardingFailed(RuntimeError):
    """Too many inputs failed; the message says how many and where the list is."""


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota (cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``) -- in a Kubernetes pod os.cpu_count() is the node's
    core count, not the pod's limit."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            q, period = f.read().split()[:2]
            if q != "max":
                quota = int(q) / int(period)
    except (OSError, ValueError):
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
                q = int(f.read())
            with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
                period = int(f.read())
            if q > 0 and period > 0:
                quota = q / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, int(quota)))
    return max(1, n)


# ----------------------------------------------------------------------------- one input (worker)

def process_item(item: Item, settings: TranscodeSettings, classes: list[str]) -> dict[str, Any]:
    """Fetch, validate and (optionally) transcode one input. Runs in a worker process.

    Returns ``{"ok": True, "key", "ext", "media", "meta"}`` or ``{"ok": False, "reason"}``.
    """
    try:
        try:
            data = storage.read_bytes(item.video, max_bytes=settings.max_bytes)
        except FileNotFoundError:
            raise InputError("missing: file not found") from None
        except IsADirectoryError:
            raise InputError("not a file (a directory)") from None
        except storage.NotRegularFileError:
            raise InputError("not a regular file (a FIFO, device or socket)") from None
        except storage.TooLargeError as e:
            raise InputError(f"too large: {str(e).removeprefix(item.video + ': ')}") from None
        except OSError as e:
            raise InputError(f"unreadable: {e}") from None
        if not data:
            raise InputError("empty file (0 bytes)")
        digest = hashlib.sha256(data).hexdigest()
        clip = f"{item.start}-{item.end}" if (item.start or item.end) else ""
        # Content hash (plus the clip range: two clips of one file are two samples).
        key = hashlib.sha256(f"{digest}:{clip}".encode()).hexdigest()[:32] if clip else digest[:32]
        if item.is_image:
            media, ext, meta = process_image(data, settings)
            meta["media"] = "image"
        elif settings.enabled:
            media, meta = transcode_video(data, settings, item.start, item.end)
            ext, meta["media"] = "mp4", "video"
        else:
            media, meta = data, check_video(data, settings)
            ext = os.path.splitext(item.video)[1].lstrip(".").lower() or "mp4"
            meta["media"] = "video"
            # Untranscoded clips keep their range; the loader samples inside it.
            if item.start is not None:
                meta["start"] = item.start
            if item.end is not None:
                meta["end"] = item.end
    except InputError as e:
        return {"ok": False, "reason": str(e)}
    except Exception as e:  # never let one input stop the step; the reason says what happened
        return {"ok": False, "reason": f"unexpected error: {type(e).__name__}: {e}"[:300]}
    meta.update(source=item.video, index=item.index, source_sha256=digest)
    if item.id is not None:
        meta["id"] = item.id
    if item.label is not None:
        meta["label"] = item.label
        if item.label < len(classes):
            meta["label_name"] = classes[item.label]
    if item.captions:
        meta["captions"] = item.captions
    meta.update(item.extra)  # multiple-choice candidates / QA questions (umt.data.downstream)
    return {"ok": True, "key": key, "ext": ext, "media": media, "meta": meta}


# ----------------------------------------------------------------------- parallel, crash-isolated

def _ping() -> int:
    return os.getpid()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers fork from a small single-threaded server process, never from this
    # one, which runs upload and progress threads (forking a threaded process can deadlock the
    # child). The server preloads this module, so a restart after a crash is quick. As with any
    # non-fork pool, a script that calls this must guard its entry point with
    # ``if __name__ == "__main__":`` (the ``umt`` command does).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["umt.data.shard"])
    return ProcessPoolExecutor(workers, mp_context=ctx)


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose worker hangs or died; only this pool's own processes are touched."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _with_env(env: dict[str, str], fn, *args):
    """Run ``fn`` with the caller's AWS settings.

    Why: workers fork from the fork server, which holds the environment of when it started; the
    caller may have set AWS_ENDPOINT_URL / credentials since (tools, tests, notebooks).
    """
    for k in [k for k in os.environ if k.startswith("AWS_") and k not in env]:
        del os.environ[k]
    os.environ.update(env)
    return fn(*args)


def _submit(pool: ProcessPoolExecutor, fn, *args) -> Future:
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    try:
        return pool.submit(_with_env, env, fn, *args)
    except BrokenProcessPool as e:  # handled like a failure found by result(): see below
        fut: Future = Future()
        fut.set_exception(e)
        return fut


def _run_isolated(fn, item: Item, settings, classes, timeout: float) -> dict[str, Any]:
    """Run one suspect input alone in a fresh process: a crash or hang blames only it."""
    pool = _new_pool(1)
    try:
        return _submit(pool, fn, item, settings, classes).result(timeout=timeout)
    except BrokenProcessPool:
        return {"ok": False, "reason": "decoder crashed the worker process (corrupt input)"}
    except FutureTimeout:
        return {"ok": False, "reason": f"timed out after {timeout:.0f} s (decoder hang?)"}
    finally:
        _kill_pool(pool)


def process_in_order(items: list[Item], settings: TranscodeSettings, classes: list[str],
                     workers: int, timeout: float,
                     fn=process_item) -> Iterator[tuple[Item, dict[str, Any]]]:
    """Yield ``(item, fn(item, settings, classes))`` in input order, ``4 * workers`` ahead.

    ``fn`` must be importable by name (it runs in spawned processes); tests swap in one that
    crashes or hangs on purpose.
    """
    pool = _new_pool(workers)
    try:
        pool.submit(_ping).result(timeout=120)
    except Exception as e:
        _kill_pool(pool)
        raise RuntimeError(f"sharding worker processes cannot start ({type(e).__name__}: {e}); a "
                           f"script that calls shard_dataset must guard its entry point with "
                           f"`if __name__ == '__main__':`") from None
    pending: deque[tuple[Item, Future]] = deque()
    todo = iter(items)

    def fill():
        while len(pending) < 4 * workers:
            it = next(todo, None)
            if it is None:
                return
            pending.append((it, _submit(pool, fn, it, settings, classes)))

    try:
        fill()
        while pending:
            item, fut = pending.popleft()
            try:
                result = fut.result(timeout=timeout)
            except (BrokenProcessPool, FutureTimeout):
                # A worker died or hangs, and we cannot tell which input did it: restart the
                # pool, run this input alone, resubmit the others (a culprit among them breaks
                # the new pool and is isolated when it reaches the head of the queue).
                _kill_pool(pool)
                pool = _new_pool(workers)
                result = _run_isolated(fn, item, settings, classes, timeout)
                pending = deque((it, _submit(pool, fn, it, settings, classes)) for it, _ in pending)
            yield item, result
            fill()
    except BaseException:
        # An error (or the consumer stopping early: GeneratorExit, KeyboardInterrupt): do not
        # wait for up to 4 * workers queued transcodes, or a hung decoder, to finish.
        _kill_pool(pool)
        raise
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------- fingerprint

def shuffled(items: list[Item], seed: int) -> list[Item]:
    """``items`` in a seeded random order: sorted by ``sha256(seed, sample id)`` (ties, the same
    input listed twice, by manifest position).

    It depends on the ids and the seed only -- not on row order, the part count or the machine --
    so a rerun (a resume) packs the same order, and a part's inputs (``--part I/N``, assigned by
    their own hash) come in the order they have in the whole run.
    """
    def rank(item: Item) -> tuple[bytes, int]:
        sid = shard_parts.sample_id(item)
        return hashlib.sha256(f"umt-shard-order:{seed}:{sid}".encode("utf-8")).digest(), item.index

    return sorted(items, key=rank)


def _fingerprint(manifest: Manifest, settings: TranscodeSettings, samples_per_shard, shard_bytes,
                 part: Optional[Part] = None, shuffle_seed: Optional[int] = None) -> str:
    """What a finished shard depends on; stats with another fingerprint are not reused."""
    what = {"manifest": manifest.sha256, "settings": settings.to_dict(),
            "classes": manifest.classes, "samples_per_shard": samples_per_shard,
            "shard_bytes": shard_bytes, "format_version": dataset_json.FORMAT_VERSION}
    if part is not None:  # absent for a whole run: its stats stay valid across this change
        what["part"] = [part.index, part.count, shard_parts.ASSIGNMENT]
    if shuffle_seed is not None:  # absent in manifest order: those stats stay valid
        what["order"] = ["sha256-of-id", shuffle_seed]
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------ the step

def parse_size(text: str | int | None) -> Optional[int]:
    """``"1GB"``, ``"500MiB"``, ``"2e9"``, ``1000`` -> bytes (None stays None)."""
    if text is None or isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 1 << 10, "M": 1 << 20,
             "G": 1 << 30, "B": 1}
    unit = next((u for u in units if s.endswith(u)), "")
    number, factor = (s[:-len(unit)], units[unit]) if unit else (s, 1)
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ValueError(f"cannot parse size {text!r} (examples: 1GB, 500MiB, 2000000)") from None
    if value <= 0:
        raise ValueError(f"size must be > 0, got {text!r}")
    return value


def shard_dataset(input: str, output: str, settings: TranscodeSettings | None = None, *,
                  samples_per_shard: Optional[int] = None, shard_bytes: Optional[int] = None,
                  workers: Optional[int] = None, max_failure_rate: float = 0.05,
                  classes: Optional[list[str]] = None, item_timeout: float = 600.0,
                  part: Optional[Part] = None, progress: bool = True,
                  input_format: str = "auto", video_root: Optional[str] = None,
                  shuffle: bool = True, shuffle_seed: int = 0) -> dataset_json.DatasetInfo:
    """Shard ``input`` (manifest, folder or s3:// prefix) into ``output``; return its dataset.json.

    A shard closes at ``samples_per_shard`` samples or once it holds ``shard_bytes`` bytes
    (default: 1000 samples). Raises :class:`ManifestError` for a bad manifest (before any work)
    and :class:`ShardingFailed` when more than ``max_failure_rate`` of the inputs fail. With
    ``part``: only that part's inputs, into ``<output>/part-IIIII-of-NNNNN/``, described by its
    ``part.json`` (returned as the info). ``input_format`` and ``video_root`` say how to read
    ``input`` (the official annotation formats; :func:`umt.data.manifest.load_manifest`).
    ``shuffle`` (default): pack in the seeded order of :func:`shuffled` (within the part, with
    ``part``); ``shuffle=False``: in manifest order.
    """
    from tqdm import tqdm

    settings = settings or TranscodeSettings()
    output = storage.check_uri(str(output))
    if output.startswith("file://"):
        output = output[len("file://"):]
    if samples_per_shard is None and shard_bytes is None:
        samples_per_shard = DEFAULT_SAMPLES_PER_SHARD
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if not 0.0 <= max_failure_rate <= 1.0:
        raise ValueError(f"max_failure_rate must be in [0, 1], got {max_failure_rate}")
    workers = max(1, workers or available_cpus())
    manifest = load_manifest(input, classes=classes, max_bytes=settings.max_bytes,
                             format=input_format, video_root=video_root)
    # A QA manifest's answer list (answer_list.json beside it) travels with the shards.
    answer_list = sidecar_answer_list(manifest.input)
    items = manifest.items
    # A dataset.json from an earlier run may describe shards this run is about to replace; so
    # may a merged one when this is one part.
    stale = [storage.join(output, dataset_json.FILENAME)]
    if part is not None:
        items = part.select(items)
        output = part.folder(output)
    order_seed = shuffle_seed if shuffle else None
    if shuffle:
        items = shuffled(items, shuffle_seed)
        stale.append(storage.join(output, shard_parts.PART_FILENAME))
    stale.append(storage.join(output, "failures.json"))
    for uri in stale:
        storage.delete(uri)
    fingerprint = _fingerprint(manifest, settings, samples_per_shard, shard_bytes, part, order_seed)

    # Resume: keep the contiguous run of verified shards from the previous attempt. Shards
    # record positions in ``items`` (the manifest index, for a whole run).
    done: list[dict] = []
    next_index = 0
    while True:
        stats = verify_stats(output, len(done), fingerprint, next_index)
        if stats is None:
            break
        done.append(stats)
        next_index = stats["next_index"]
    if done:
        log.info("resuming: %d complete shards cover inputs [0, %d)", len(done), next_index)
    seen = {k for s in done for k in s["keys"]}
    failures = [f for s in done for f in s["failures"]]

    if storage.is_s3(output):
        # A run that died with the endpoint could not abort its multipart upload; its parts are
        # still stored (and billed). Only this dataset's own shard keys are touched.
        own = re.compile(re.escape(output.rstrip("/")) + r"/shard-\d{6}\.tar")
        for uri in storage.abort_multipart_uploads(output, keep=lambda u: not own.fullmatch(u)):
            log.warning("aborted an incomplete multipart upload of an earlier run: %s", uri)
    sink = ShardSink(output, fingerprint)
    shard: Optional[OpenShard] = None
    num_shards = len(done)
    bar = tqdm(total=len(items), initial=next_index, unit="video", disable=not progress,
               desc="shard", smoothing=0.1, dynamic_ncols=True)
    try:
        results = process_in_order(items[next_index:], settings, manifest.classes, workers,
                                   item_timeout)
        for pos, (item, result) in enumerate(results, start=next_index):
            if shard is None:
                shard = sink.open(num_shards, pos)
            if not result["ok"]:
                f = {"index": item.index, "source": item.video, "reason": result["reason"]}
                shard.failures.append(f)
                failures.append(f)
                log.info("skipped input %d (%s): %s", item.index, item.video, result["reason"])
            else:
                key, n = result["key"], 1
                while key in seen:  # the same content listed twice: keep both, distinctly keyed
                    key, n = f"{result['key']}_{n}", n + 1
                seen.add(key)
                sample = sample_record(key, result)
                shard.writer.write(sample)
                shard.keys.append(key)
                kind = result["meta"].get("media", "video")
                shard.media[kind] = shard.media.get(kind, 0) + 1
                shard.num_captions += len(result["meta"].get("captions") or [])
                shard.num_questions += len(result["meta"].get("questions") or [])
                shard.num_bytes += sum(len(v) for k, v in sample.items() if k != "__key__")
                if ((samples_per_shard and len(shard.keys) >= samples_per_shard)
                        or (shard_bytes and shard.num_bytes >= shard_bytes)):
                    sink.close(shard, pos + 1)
                    shard, num_shards = None, num_shards + 1
            bar.update(1)
            bar.set_postfix(failed=len(failures), shards=num_shards, refresh=False)
        if shard is not None and shard.keys:
            sink.close(shard, len(items))
            num_shards += 1
            bar.set_postfix(failed=len(failures), shards=num_shards)
        elif shard is not None:  # only failures since the last shard: nothing to write
            sink.abort(shard)
        shard = None
        sink.wait()
    except storage.StorageError as e:
        raise storage.StorageError(
            f"{e}. Sharding stopped: the {len(sink.finished) + len(done)} finished shards are "
            f"kept, and a re-run of the same command resumes after them (and aborts this run's "
            f"incomplete multipart uploads)") from e
    finally:
        bar.close()
        sink.abort(shard)
        sink.cleanup()

    failures.sort(key=lambda f: f["index"])  # packing order is shuffled; reports by manifest row
    all_stats = done + [sink.finished[k] for k in sorted(sink.finished)]
    remove_stale(output, num_shards)
    rate = len(failures) / max(1, len(items))
    info = dataset_json.DatasetInfo(
        shards=[dataset_json.ShardInfo(uri=s["shard"], num_samples=s["num_samples"],
                                       num_bytes=s["num_bytes"], sha256=s["sha256"],
                                       num_captions=s.get("num_captions"), media=s.get("media", {}),
                                       num_questions=s.get("num_questions"))
                for s in all_stats],
        classes=manifest.classes, failures=[dataset_json.Failure(**f) for f in failures],
        num_failed=len(failures),
        source={"input": manifest.input, "sha256": manifest.sha256,
                "num_inputs": len(manifest.items),
                "order": "manifest" if order_seed is None else f"shuffled (seed {order_seed})"},
        transcode=settings.to_dict(), created_by=f"umt {umt.__version__}",
        location=storage.join(output, dataset_json.FILENAME))
    info.num_samples = sum(s.num_samples for s in info.shards)
    info.num_bytes = sum(s.num_bytes for s in info.shards)
    # Summaries for the Stage-2 loader; unknown when a resumed shard's stats predate them.
    if all(s.num_questions is not None for s in info.shards):
        info.num_questions = sum(s.num_questions for s in info.shards)
    if all(s.num_captions is not None for s in info.shards):
        info.num_captions = sum(s.num_captions for s in info.shards)
        for s in info.shards:
            for kind, n in s.media.items():
                info.media[kind] = info.media.get(kind, 0) + n
    # A part may get no inputs at all (more parts than inputs): an empty part, not a failure.
    if rate > max_failure_rate or (info.num_samples == 0 and items):
        report = storage.join(output, "failures.json")
        storage.write_bytes(report, json.dumps(info.to_dict()["failures"], indent=2).encode())
        reasons: dict[str, int] = {}
        for f in failures:
            reasons[f["reason"].split(":")[0]] = reasons.get(f["reason"].split(":")[0], 0) + 1
        top = ", ".join(f"{r} ({n})" for r, n in sorted(reasons.items(), key=lambda x: -x[1])[:5])
        raise ShardingFailed(
            f"{len(failures)} of {len(items)} inputs failed ({rate:.1%} > --max-failure-rate "
            f"{max_failure_rate:.1%}); reasons: {top}. Full list: {report}. The {num_shards} "
            f"finished shards are kept; a re-run resumes after them.")
    if answer_list is not None:
        storage.write_bytes(storage.join(output, ANSWER_LIST), json.dumps(answer_list).encode())
    if part is not None:
        info.location = shard_parts.write_part_manifest(
            output, part, info, num_inputs=len(items),
            dataset_fingerprint=_fingerprint(manifest, settings, samples_per_shard, shard_bytes,
                                             shuffle_seed=order_seed))
        log.info("part %s: wrote %d samples in %d shards (%d failed) to %s", part,
                 info.num_samples, len(info.shards), len(failures), output)
        return info
    dataset_json.save(info, info.location)
    log.info("wrote %d samples in %d shards (%d failed) to %s", info.num_samples, len(info.shards),
             len(failures), output)
    return info
