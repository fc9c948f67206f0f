"""Bad data (issue 12 §3): a generated corpus of 136 broken inputs (+ 9 valid ones) through
``umt shard`` and through the training and evaluation loaders.

Wanted: no crash and no hang; every input accounted for (kept, or recorded with a reason);
every valid input kept; whatever sharding keeps decodes in training; a decoder that kills its
process (decord aborts on a corrupt sample table and segfaults on a chunk offset past the end:
both are in the corpus) costs only that input, in sharding and in a training DataLoader worker.

Elsewhere: hand-picked bad videos in tests/test_data_shard.py
(test_bad_inputs_are_recorded_and_nothing_valid_is_lost, test_decoder_crash_and_hang_cost_only_
their_input, test_inputs_that_are_not_regular_files_or_too_big_fail_alone_and_fast) and
malformed sample metadata in tests/test_data_bad_samples.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import fuzz_corpus
import pytest
import webdataset as wds

from umt.configs.schema import DataConfig
from umt.data import dataset_json
from umt.data.shard import shard_dataset
from umt.data.stream import build_pretrain_loader
from umt.data.transcode import TranscodeSettings
from umt.data.webdataset_loader import build_eval_loader

# Inputs on which decord kills its process (found by this corpus): an abort (std::bad_alloc,
# 2^32-1 frames declared) and a segmentation fault (chunk offset past the end of the file).
DECORD_CRASHERS = ["absurd_11_mp4.mp4", "absurd_11_faststart.mp4", "absurd_14_mp4.mp4",
                   "absurd_14_faststart.mp4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return fuzz_corpus.build(tmp_path_factory.mktemp("fuzz"))


def _manifest(folder: Path, cases) -> str:
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps({"video": c.path, "label": "x"}) + "\n" for c in cases))
    return str(path)


def _check_accounting(info, cases) -> dict[str, str]:
    """Every input kept or failed with a one-line reason, exactly once; every valid one kept;
    the expected reasons. Returns ``{name: reason}`` of the failures."""
    failed = {os.path.basename(f.source): f.reason for f in info.failures}
    assert len(failed) == info.num_failed == len(info.failures)
    assert info.num_samples + info.num_failed == len(cases)
    for c in cases:
        reason = failed.get(c.name)
        if c.valid:
            assert reason is None, (c.name, reason)
        elif c.reason:
            assert reason is not None and reason.startswith(c.reason), (c.name, c.category, reason)
        if reason is not None:
            assert reason.strip() and "\n" not in reason and "timed out" not in reason, (c.name, reason)
    return failed


def _every_kept_sample_decodes(info, decoder: str) -> set[str]:
    """The evaluation loader reads every sample of the shards once, skipping none."""
    loader = build_eval_loader(info.location, batch_size=8, num_frames=4, img_size=16,
                               decoder=decoder)
    keys = [k for batch in loader for k in batch["key"]]
    assert loader.num_skipped == 0, dict(loader.skip_reasons)
    assert len(keys) == len(set(keys)) == info.num_samples
    return set(keys)


def test_umt_shard_records_every_broken_input_and_keeps_every_valid_one(corpus, tmp_path):
    assert len(corpus) >= 145 and sum(not c.valid for c in corpus) >= 100
    info = shard_dataset(_manifest(tmp_path, corpus), str(tmp_path / "out"), samples_per_shard=64,
                         workers=2, max_failure_rate=1.0, item_timeout=60, progress=False)
    failed = _check_accounting(info, corpus)
    kinds = {r.split(":")[0] for r in failed.values()}
    assert {"not a readable video", "no video stream (streams", "empty file (0 bytes)",
            "corrupt video stream", "truncated", "not a readable image",
            "unusable frame rate", "resolution exceeds the limit"} <= kinds, kinds
    assert _every_kept_sample_decodes(info, "decord")
    _every_kept_sample_decodes(info, "pyav")


def test_umt_shard_without_transcoding_survives_real_decoder_crashes(corpus, tmp_path):
    """Originals are test-decoded with decord after a strict PyAV decode: the two inputs that
    make decord abort kill a worker process each and are recorded as such (the two that make it
    segfault are refused earlier, by PyAV); every other input is unaffected."""
    cases = [c for c in corpus if c.valid or c.category.startswith("absurd")]
    info = shard_dataset(_manifest(tmp_path, cases), str(tmp_path / "out"),
                         TranscodeSettings(enabled=False), workers=2, max_failure_rate=1.0,
                         item_timeout=60, progress=False)
    failed = _check_accounting(info, cases)
    crashed = sorted(n for n, r in failed.items() if r.startswith("decoder crashed"))
    assert crashed == ["absurd_11_faststart.mp4", "absurd_11_mp4.mp4"], failed
    assert _every_kept_sample_decodes(info, "decord")


# ------------------------------------------------------------ the raw corpus in a training shard

def _raw_shard(folder: Path, corpus) -> tuple[str, dict]:
    """Every corpus file as a sample of one tar, as written by another tool (nothing of it
    validated): ``(dataset.json, {key: case})``."""
    cases = {}
    with open(folder / "raw.tar", "wb") as f, wds.TarWriter(f) as w:
        for i, c in enumerate(corpus):
            key = f"s{i:03d}"
            w.write({"__key__": key, c.name.rsplit(".", 1)[1]: Path(c.path).read_bytes(),
                     "cls": b"0"})
            cases[key] = c
    info = dataset_json.DatasetInfo(
        shards=[dataset_json.ShardInfo(uri="raw.tar", num_samples=len(corpus),
                                       num_bytes=(folder / "raw.tar").stat().st_size)],
        classes=["x"], num_samples=len(corpus))
    dataset_json.save(info, str(folder / "dataset.json"))
    return str(folder / "dataset.json"), cases


@pytest.fixture(scope="module")
def raw_shard(corpus, tmp_path_factory):
    return _raw_shard(tmp_path_factory.mktemp("raw"), corpus)


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_the_eval_loader_reads_every_valid_sample_and_skips_the_rest(corpus, decoder, tmp_path):
    if decoder == "decord":  # without the inputs that kill decord (the next tests have them)
        corpus = [c for c in corpus if c.name not in DECORD_CRASHERS]
    source, cases = _raw_shard(tmp_path, corpus)
    loader = build_eval_loader(source, batch_size=8, num_frames=4, img_size=16, decoder=decoder)
    keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == len(set(keys)) and len(keys) + loader.num_skipped == len(cases)
    assert {k for k, c in cases.items() if c.valid} <= set(keys)
    assert loader.num_skipped >= 80, dict(loader.skip_reasons)


def test_a_decoder_crash_in_a_training_dataloader_worker_skips_the_sample(raw_shard):
    """decord aborts / segfaults in the DataLoader worker on four samples, while the training
    process waits for a batch or is busy with its step: each costs that sample (skipped on
    every later pass too), the workers restart at the step they were making, and training
    batches keep coming in order."""
    source, cases = raw_shard
    cfg = DataConfig(source=source, num_workers=1, shuffle_buffer=0, crop_scales=[1.0],
                     decoder="decord")
    loader = build_pretrain_loader(cfg, batch_size=8, num_frames=4, img_size=16)
    seen, step, last_crash = set(), 0, None
    # A restart re-reads the one shard from its start: one crash per pass, then clean passes
    # (a pass is ~7 batches: go on for two after the last crash).
    while last_crash is None or step < last_crash + 14:
        assert step < 150, f"only {loader.crashes} crashes in {step} steps"
        if last_crash is None and loader.crashes == len(DECORD_CRASHERS):
            last_crash = step
        batch = next(loader)
        assert batch["step"] == step and len(batch["key"]) == 8
        seen.update(batch["key"])
        step += 1
        time.sleep(0.02)  # the training step: the worker decodes ahead (and dies) meanwhile
    assert loader.crashes == len(DECORD_CRASHERS)
    # one skip per crash, and more for the crashers met again (skipped without decoding)
    assert loader.skip_reasons["decoder crashed the worker process"] > len(DECORD_CRASHERS)
    assert {k for k, c in cases.items() if c.valid} <= seen
    assert not {cases[k].name for k in seen} & set(DECORD_CRASHERS)


def test_an_eval_loader_worker_crash_names_the_sample(raw_shard):
    source, cases = raw_shard
    crasher = next(k for k, c in cases.items() if c.name in DECORD_CRASHERS)
    loader = build_eval_loader(source, batch_size=8, num_frames=4, img_size=16, decoder="decord",
                               num_workers=1)
    with pytest.raises(RuntimeError, match=rf"died while decoding .*raw.tar:{crasher}.*"
                                           rf"data.decoder=pyav"):
        for _ in loader:
            pass


@pytest.fixture
def stuck_on_one_sample(synthetic_shards, monkeypatch):
    """A decoder that hangs on one sample of the synthetic shards (it sleeps for 2 minutes in
    ``read_frames``, inside the DataLoader worker, which forks with the patch in place); the
    watchdog's limit set to 2 s. Returns (dataset.json, the stuck sample's key, all keys)."""
    from umt.data import webdataset_loader

    keys = [k for batch in build_eval_loader(synthetic_shards, batch_size=8, num_frames=4,
                                             img_size=16) for k in batch["key"]]
    stuck = keys[5]
    real = webdataset_loader.read_frames

    def read_frames(sample, *args, **kwargs):
        if sample.get("__key__") == stuck:
            time.sleep(120)  # a watchdog that fails lets the test fail, not hang
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(webdataset_loader, "read_frames", read_frames)
    monkeypatch.setenv("UMT_DECODE_TIMEOUT_S", "2")
    return synthetic_shards, stuck, keys


def test_a_decode_that_hangs_stops_its_worker_and_costs_only_that_sample(stuck_on_one_sample):
    """The watchdog kills the worker stuck for 2 s; the sample is skipped as 'decode timed
    out' (and on sight on later passes), the workers restart at the step they were making, and
    training batches keep coming in order."""
    source, stuck, keys = stuck_on_one_sample
    cfg = DataConfig(source=source, num_workers=1, shuffle_buffer=0, crop_scales=[1.0])
    loader = build_pretrain_loader(cfg, batch_size=4, num_frames=4, img_size=16)
    t0, seen = time.monotonic(), set()
    for step in range(18):  # three passes over the 24 clips
        batch = next(loader)
        assert batch["step"] == step and len(batch["key"]) == 4
        assert time.monotonic() - t0 < 60, "the stuck decode was not stopped"
        seen.update(batch["key"])
    assert stuck not in seen and seen == set(keys) - {stuck}
    assert loader.crashes == 1
    assert loader.skip_reasons["decode timed out (worker stopped)"] >= 2, dict(loader.skip_reasons)


def test_a_decode_that_hangs_in_an_eval_loader_names_the_sample(stuck_on_one_sample):
    source, stuck, _ = stuck_on_one_sample
    loader = build_eval_loader(source, batch_size=8, num_frames=4, img_size=16, num_workers=1)
    with pytest.raises(RuntimeError, match=rf"decoding .*:{stuck} \(its decode took longer than "
                                           rf"the limit, 2 s"):
        for _ in loader:
            pass


def test_the_decode_time_limit_is_checked(monkeypatch):
    from umt.data import worker_crash

    for bad in ("-1", "soon", "inf", "nan"):
        monkeypatch.setenv("UMT_DECODE_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="UMT_DECODE_TIMEOUT_S"):
            worker_crash.decode_timeout()
    monkeypatch.setenv("UMT_DECODE_TIMEOUT_S", "0")
    assert worker_crash.decode_timeout() == 0
