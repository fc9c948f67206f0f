"""`umt shard --part I/N` + `umt shard merge`: the parts give the same samples and classes as one
run, a killed part resumes, and a missing, duplicated or inconsistent part is refused."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from umt.data import dataset_json
from umt.data.shard import shard_dataset
from umt.data.shard_parts import (
    Part,
    PartError,
    merge_parts,
    parse_part,
    part_of,
    sample_id,
)

ROOT = Path(__file__).resolve().parents[1]


def umt_app():
    from umt.data.cli import shard_app

    app = typer.Typer()
    app.add_typer(shard_app, name="shard")
    return app


def umt(*args: str):
    """`umt <args>` in this process; returns the CliRunner result."""
    return CliRunner().invoke(umt_app(), list(args))


def samples(dataset: str) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} over every shard of a dataset.json."""
    out: dict[str, dict[str, bytes]] = {}
    for uri in dataset_json.load(dataset).shard_uris():
        with tarfile.open(uri) as tf:
            for m in tf:
                key, ext = m.name.split(".", 1)
                assert ext not in out.get(key, {}), f"key {key} twice"
                out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, synthetic_manifest, bad_videos):
    """The 24 synthetic clips (labels, captions, ids), a row listed twice and one broken input."""
    folder = tmp_path_factory.mktemp("parts")
    with open(synthetic_manifest) as f:
        rows = list(csv.DictReader(f))
    base = os.path.dirname(synthetic_manifest)
    for r in rows:
        r["video"] = os.path.join(base, r["video"])
    rows.append(dict(rows[3]))  # the same row again: same sample id, so the same part
    rows.append({"video": bad_videos["text"], "label": rows[0]["label"], "caption": "broken",
                 "id": "broken"})
    path = folder / "m.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def whole(manifest, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one") / "one")
    r = umt("shard", "-i", manifest, "-o", out, "--samples-per-shard", "4", "-j", "2", "-q",
            "--max-failure-rate", "0.1")
    assert r.exit_code == 0, r.output
    return out


# ---------------------------------------------------------------------------------- assignment

def test_assignment_is_pinned_balanced_and_moves_least_when_parts_are_added():
    # Pinned: a change here would move samples between the parts of existing runs.
    assert [part_of(s, 16) for s in ("a", "video-0001", "s3://b/x.mp4#1.5-3.0")] == [1, 12, 4]
    assert [part_of("a", n) for n in (1, 2, 3, 4, 10, 1000)] == [0, 1, 1, 1, 1, 912]

    ids = [f"s3://raw/k710/{i:07d}.mp4" for i in range(20_000)]
    counts = collections.Counter(part_of(s, 4) for s in ids)
    assert all(abs(n - 5000) < 250 for n in counts.values()), counts  # binomial: sd ~61
    # 2 -> 3 parts: only a third of the inputs move, all into the new part 2; 3 -> 2: back.
    for n, m in ((2, 3), (3, 2), (4, 16)):
        before, after = [part_of(s, n) for s in ids], [part_of(s, m) for s in ids]
        moved = [(a, b) for a, b in zip(before, after) if a != b]
        assert abs(len(moved) / len(ids) - abs(1 - min(n, m) / max(n, m))) < 0.02, (n, m)
        assert all(max(a, b) >= min(n, m) for a, b in moved), "moved between surviving parts"
    # What hash mod N would have moved instead (2 -> 3): two thirds.
    keys = [int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") for s in ids]
    assert abs(sum(k % 2 != k % 3 for k in keys) / len(ids) - 2 / 3) < 0.02


def test_sample_id_and_part_parsing():
    from umt.data.manifest import Item

    assert sample_id(Item(0, "/v/a.mp4")) == "/v/a.mp4"
    assert sample_id(Item(0, "/v/a.mp4", id="yt-123")) == "yt-123"
    assert sample_id(Item(0, "/v/a.mp4", start=1.5, end=3.0)) == "/v/a.mp4#1.5-3.0"
    assert parse_part(" 3/16 ") == Part(3, 16) and Part(3, 16).name == "part-00003-of-00016"
    for bad in ("3", "16/16", "-1/2", "1/0", "a/b"):
        with pytest.raises(ValueError):
            parse_part(bad)
    r = umt("shard", "-i", "m.csv", "-o", "out", "--part", "2/2")
    assert r.exit_code == 2 and "need 0 <= I < N" in r.output


# ----------------------------------------------------------------------------- parts -> merge

def test_parts_then_merge_give_the_same_samples_and_classes_as_one_run(manifest, whole, tmp_path):
    out = str(tmp_path / "out")
    for part in ("0/2", "1/2"):
        r = umt("shard", "-i", manifest, "-o", out, "--part", part, "--samples-per-shard", "4",
                "-j", "2", "-q", "--max-failure-rate", "0.2")
        assert r.exit_code == 0, r.output
        assert f"part-0000{part[0]}-of-00002/part.json" in r.output
    assert not os.path.exists(os.path.join(out, "dataset.json"))  # only the merge writes it
    r = umt("shard", "merge", out)
    assert r.exit_code == 0, r.output
    assert "wrote 25 samples" in r.output and "1 inputs failed" in r.output

    one, merged = dataset_json.load(whole), dataset_json.load(out)
    assert merged.classes == one.classes and len(one.classes) >= 4
    # Every sample byte for byte: media, .json (label, captions, manifest index), .cls, .txt;
    # the duplicated row keeps both samples, keyed as in one run (same sample id, same part).
    got, want = samples(out), samples(whole)
    assert got == want and len(got) == 25
    assert sum(k.endswith("_1") for k in got) == 1
    assert (merged.num_samples, merged.num_failed, merged.num_captions, merged.media) == (
        one.num_samples, one.num_failed, one.num_captions, one.media) == (25, 1, 25, {"video": 25})
    assert [(f.index, f.reason) for f in merged.failures] == [
        (f.index, f.reason) for f in one.failures]
    assert merged.failures[0].index == 25 and "not a readable video" in merged.failures[0].reason
    assert merged.source == {**one.source, "parts": 2} and merged.transcode == one.transcode
    # Each part's shards stay in its folder; dataset.json names them relative to itself.
    assert {s.uri.split("/")[0] for s in merged.shards} == {"part-00000-of-00002",
                                                            "part-00001-of-00002"}
    for shard, uri in zip(merged.shards, merged.shard_uris()):
        assert hashlib.sha256(open(uri, "rb").read()).hexdigest() == shard.sha256
    # Each input went to the part its sample id hashes to.
    part0 = json.loads(open(os.path.join(out, "part-00000-of-00002", "part.json")).read())
    part1 = json.loads(open(os.path.join(out, "part-00001-of-00002", "part.json")).read())
    assert part0["num_inputs"] + part1["num_inputs"] == 26
    in_part0 = samples_of(out, 0)
    for key, sample in got.items():
        assert part_of(json.loads(sample["json"])["id"], 2) == (0 if key in in_part0 else 1)


def samples_of(out: str, index: int) -> set[str]:
    folder = os.path.join(out, f"part-{index:05d}-of-00002")
    keys = set()
    for name in os.listdir(folder):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(folder, name)) as tf:
                keys |= {m.name.split(".", 1)[0] for m in tf}
    return keys


def test_a_killed_part_resumes_and_merge_waits_for_it(manifest, whole, tmp_path):
    out = tmp_path / "out"
    common = ["-i", manifest, "-o", str(out), "--samples-per-shard", "1", "-q",
              "--max-failure-rate", "0.2"]
    assert umt("shard", *common, "-j", "2", "--part", "0/2").exit_code == 0
    # Part 1 as its own process, SIGKILLed (no chance to clean up) after its first shard.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "umt.cli", "shard", *common, "-j", "1",
                             "--part", "1/2"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part1 = out / "part-00001-of-00002"
    try:
        deadline = time.monotonic() + 300
        while not (part1 / "shard-000000_stats.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "part 1 wrote no shard"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and its worker processes
        proc.wait(30)
    assert not (part1 / "part.json").exists()
    first = (part1 / "shard-000000.tar").stat().st_mtime_ns

    r = umt("shard", "merge", str(out))
    assert r.exit_code == 2 and "part 1/2 missing" in r.output
    assert "--part 1/2" in r.output and not (out / "dataset.json").exists()

    r = umt("shard", *common, "-j", "2", "--part", "1/2")
    assert r.exit_code == 0, r.output
    assert (part1 / "shard-000000.tar").stat().st_mtime_ns == first  # verified and kept
    assert umt("shard", "merge", str(out)).exit_code == 0
    assert samples(str(out)) == samples(whole)
    assert dataset_json.load(str(out)).classes == dataset_json.load(whole).classes


def test_merge_refuses_a_duplicated_or_inconsistent_part(manifest, tmp_path):
    out = tmp_path / "out"
    args = ["-i", manifest, "-o", str(out), "-q", "-j", "2", "--max-failure-rate", "0.5"]
    for part in ("0/2", "1/2"):
        assert umt("shard", *args, "--part", part).exit_code == 0

    # A duplicated part: part 0's folder copied over part 1's.
    p0, p1 = out / "part-00000-of-00002", out / "part-00001-of-00002"
    saved = tmp_path / "saved"
    shutil.copytree(p1, saved)
    shutil.rmtree(p1)
    shutil.copytree(p0, p1)
    r = umt("shard", "merge", str(out))
    assert r.exit_code == 2 and "is the manifest of part 0/2, not 1/2" in r.output
    assert "merged twice" in r.output
    shutil.rmtree(p1)
    shutil.copytree(saved, p1)

    # Parts of another count beside them: the merge needs to be told which.
    assert umt("shard", *args, "--part", "0/3").exit_code == 0
    r = umt("shard", "merge", str(out))
    assert r.exit_code == 2 and "several part counts (2, 3)" in r.output
    r = umt("shard", "merge", str(out), "--parts", "3")
    assert r.exit_code == 2 and "part 1/3, 2/3 missing" in r.output
    assert umt("shard", "merge", str(out), "--parts", "2").exit_code == 0

    # A part sharded with another class list (a --classes file in another order).
    classes = tmp_path / "classes.txt"
    names = dataset_json.load(str(out)).classes
    classes.write_text("\n".join(reversed(names)) + "\n")
    assert umt("shard", *args, "--part", "1/2", "--classes", str(classes)).exit_code == 0
    assert not (out / "dataset.json").exists()  # a part run drops the merged file it changes
    r = umt("shard", "merge", str(out), "--parts", "2")
    assert r.exit_code == 2 and "part 1/2 has another class list than part 0" in r.output

    # ... or other transcode settings.
    assert umt("shard", *args, "--part", "1/2", "--short-side", "32").exit_code == 0
    r = umt("shard", "merge", str(out), "--parts", "2")
    assert r.exit_code == 2 and "part 1/2 was sharded with other settings" in r.output

    r = umt("shard", "merge", str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "no part folders" in r.output


def test_more_parts_than_inputs_and_a_single_part(synthetic_manifest, tmp_path):
    lines = open(synthetic_manifest).read().splitlines(keepends=True)
    small = tmp_path / "m.csv"
    small.write_text("".join(line if i == 0 else line.replace("videos/", os.path.join(
        os.path.dirname(synthetic_manifest), "videos/")) for i, line in enumerate(lines[:4])))
    out = str(tmp_path / "out")
    for i in range(5):  # 3 inputs, 5 parts: some parts are empty, and that is fine
        shard_dataset(str(small), out, part=Part(i, 5), workers=1, progress=False)
    merged = merge_parts(out)
    assert merged.num_samples == 3 and merged.source["parts"] == 5
    five = samples(merged.location)
    # --part 0/1 is the whole manifest, in a part folder.
    one = shard_dataset(str(small), out, part=Part(0, 1), workers=1, progress=False)
    assert one.num_samples == 3 and one.location.endswith("part-00000-of-00001/part.json")
    with pytest.raises(PartError, match="several part counts"):
        merge_parts(out)
    assert samples(merge_parts(out, 1).location) == five


def test_parts_and_merge_on_s3(s3_bucket, synthetic_manifest):
    from umt import storage

    out = f"{s3_bucket}/parts"
    for i in range(2):
        shard_dataset(synthetic_manifest, out, part=Part(i, 2), samples_per_shard=8, workers=2,
                      progress=False)
    merged = merge_parts(out)
    assert merged.num_samples == 24 and merged.location == f"{out}/dataset.json"
    loaded = dataset_json.load(out)
    assert all(storage.size(u) == s.num_bytes for u, s in zip(loaded.shard_uris(), loaded.shards))
    assert all(u.startswith(f"{out}/part-0000") for u in loaded.shard_uris())
