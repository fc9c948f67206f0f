"""Manifests and dataset.json: parsed strictly, with errors that name the file, line and problem."""

from __future__ import annotations

import json
import os

import pytest

from umt import storage
from umt.data import dataset_json
from umt.data.dataset_json import DatasetJsonError
from umt.data.manifest import ManifestError, load_manifest, read_classes


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_csv_manifest(tmp_path):
    m = load_manifest(write(tmp_path, "m.csv",
                            "video,label,caption,start,end,id\n"
                            "a.mp4,dog,a dog,,,x1\n"
                            "/abs/b.mp4,cat,\"[\"\"one\"\", \"\"two\"\"]\",1.5,3,\n"
                            "s3://bucket/c.mp4,dog,,0,2,\n"
                            "\n"
                            "sub/d.jpg,,,,,\n"))
    assert m.classes == ["cat", "dog"]
    a, b, c, d = m.items
    assert a.video == str(tmp_path / "a.mp4") and a.label == 1 and a.captions == ["a dog"] and a.id == "x1"
    assert b.video == "/abs/b.mp4" and b.captions == ["one", "two"] and (b.start, b.end) == (1.5, 3.0)
    assert c.video == "s3://bucket/c.mp4" and c.label == 1
    assert d.is_image and d.label is None and d.line == 6
    assert [it.index for it in m.items] == [0, 1, 2, 3]
    assert len(m.sha256) == 64


def test_jsonl_and_json_list_and_index_labels(tmp_path):
    rows = [{"video": "a.mp4", "label": 3, "caption": ["x", "y"]}, {"video": "b.mp4", "label": 0}]
    m = load_manifest(write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"))
    assert [it.label for it in m.items] == [3, 0] and m.classes == ["0", "1", "2", "3"]
    assert m.items[0].captions == ["x", "y"]
    m = load_manifest(write(tmp_path, "m.json", json.dumps(rows)))
    assert [it.label for it in m.items] == [3, 0]


def test_class_list_fixes_indices(tmp_path):
    classes = read_classes(write(tmp_path, "classes.txt", "zebra\napple\n"))
    m = load_manifest(write(tmp_path, "m.csv", "video,label\na.mp4,apple\nb.mp4,zebra\n"), classes)
    assert m.classes == ["zebra", "apple"] and [it.label for it in m.items] == [1, 0]
    with pytest.raises(ManifestError, match=r"line 2: label 'pear' is not one of the 2 given classes"):
        load_manifest(write(tmp_path, "m2.csv", "video,label\na.mp4,pear\n"), classes)


@pytest.mark.parametrize("name,text,message", [
    ("m.csv", "path,label\na.mp4,x\n", r"m.csv: line 1: no 'video' column"),
    ("m.csv", "video,label\na.mp4,x\nb.mp4,y,z\n", r"m.csv: line 3: 3 fields, the header has 2"),
    ("m.csv", "video,label,caption\na.mp4\n", r"m.csv: line 2: fewer fields than the header's 3"),
    ("m.csv", "video,label\n,x\n", r"m.csv: line 2: empty 'video' value"),
    ("m.csv", "video,start\na.mp4,soon\n", r"line 2: 'start' must be a number of seconds, got 'soon'"),
    ("m.csv", "video,start,end\na.mp4,5,2\n", r"line 2: 'end' \(2.0\) must be greater than 'start' \(5.0\)"),
    ("m.csv", "video\npipe:curl x|sh\n", r"line 2: unsupported location .*scheme 'pipe' rejected"),
    ("m.csv", "video\nhttp://x/a.mp4\n", r"line 2: unsupported location"),
    ("m.csv", "video,caption\na.mp4,[broken\n", r"line 2: 'caption' looks like a JSON list but is not"),
    ("m.jsonl", '{"video": "a.mp4"}\n{"video": "b.mp4"\n', r"m.jsonl: line 2: not valid JSON"),
    ("m.jsonl", '{"video": "a.mp4"}\n["b.mp4"]\n', r"line 2: each line must be a JSON object, got list"),
    ("m.jsonl", '{"label": 1}\n', r"line 1: no 'video' value"),
    ("m.jsonl", '{"video": 5}\n', r"line 1: 'video' must be a string"),
    ("m.jsonl", '{"video": "a.mp4", "label": -2}\n', r"line 1: label index must be >= 0"),
    ("m.jsonl", '{"video": "a.mp4", "caption": [1, 2]}\n', r"line 1: 'caption' must be a string or a list of strings"),
    ("m.csv", "video\n", r"the manifest lists no videos"),
])
def test_bad_manifests_name_file_line_and_problem(tmp_path, name, text, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(write(tmp_path, name, text))


def test_unreadable_manifests(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(str(tmp_path / "nope.csv"))
    (tmp_path / "bin.csv").write_bytes(b"video\n\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="manifest is not UTF-8 text"):
        load_manifest(str(tmp_path / "bin.csv"))
    with pytest.raises(ManifestError, match="unknown manifest type"):
        load_manifest(write(tmp_path, "m.txt", "a.mp4\n"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no videos or images found"):
        load_manifest(str(tmp_path / "empty"))


def test_folder_and_s3_prefix_listing(tmp_path, s3_bucket):
    for rel in ("train/abseiling/1.mp4", "train/abseiling/2.webm", "train/zumba/3.mp4",
                "train/zumba/readme.txt", "train/loose.mp4"):
        storage.write_bytes(str(tmp_path / rel), b"x")
        storage.write_bytes(f"{s3_bucket}/raw/{rel}", b"x")
    local = load_manifest(str(tmp_path / "train"))
    remote = load_manifest(f"{s3_bucket}/raw/train")
    for m in (local, remote):
        assert m.classes == ["abseiling", "zumba"]
        labels = {os.path.basename(it.video): it.label for it in m.items}
        assert set(labels) == {"1.mp4", "2.webm", "3.mp4", "loose.mp4"}
        assert labels["1.mp4"] == labels["2.webm"] != labels["3.mp4"]
        assert labels["loose.mp4"] is None  # directly under the root: no class folder
    assert remote.items[0].video.startswith(s3_bucket + "/raw/train/")


def test_dataset_json_roundtrip_and_validation(tmp_path):
    info = dataset_json.DatasetInfo(
        shards=[dataset_json.ShardInfo("shard-000000.tar", 3, 100, "ab"),
                dataset_json.ShardInfo("s3://other/x.tar", 2, 50)],
        classes=["a"], num_samples=5, num_bytes=150,
        failures=[dataset_json.Failure(4, "bad.mp4", "empty file (0 bytes)")], num_failed=1)
    path = str(tmp_path / "ds" / "dataset.json")
    dataset_json.save(info, path)
    loaded = dataset_json.load(path)
    assert loaded.shard_uris() == [str(tmp_path / "ds" / "shard-000000.tar"), "s3://other/x.tar"]
    assert loaded.to_dict() == info.to_dict()
    assert list(json.load(open(path)))[:3] == ["format", "format_version", "created_by"]

    def bad(mutate, message):
        d = info.to_dict()
        mutate(d)
        (tmp_path / "bad.json").write_text(json.dumps(d))
        with pytest.raises(DatasetJsonError, match=message):
            dataset_json.load(str(tmp_path / "bad.json"))

    bad(lambda d: d.update(format="tfrecord"), "'format' must be 'umt-webdataset'")
    bad(lambda d: d.update(format_version=99), "format_version 99 is newer")
    bad(lambda d: d.pop("shards"), "missing field 'shards'")
    bad(lambda d: d["shards"][0].update(num_samples="3"), r"shards\[0\]: field 'num_samples' must be int")
    bad(lambda d: d["shards"][1].update(uri="pipe:cat x"), r"shards\[1\]: unsupported location")
    bad(lambda d: d.update(num_samples=7), "num_samples 7 != sum of the shards' num_samples 5")
    bad(lambda d: d.update(classes=[1]), "'classes' must be a list of strings")
    bad(lambda d: d.update(shards=[], num_samples=0), "the dataset has no shards")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DatasetJsonError, match="not valid JSON"):
        dataset_json.load(str(tmp_path / "bad.json"))
    with pytest.raises(DatasetJsonError, match="not found"):
        dataset_json.load(str(tmp_path / "missing"))


# ---------------------------------------------------------------- untrusted input (issue 7 §4)

def test_huge_integer_label_is_refused_without_building_a_class_list(tmp_path):
    import time

    t0 = time.perf_counter()
    with pytest.raises(ManifestError, match=r"m.csv: line 3: label index 999999999999 is above "
                                            r"the limit of \d+ class indices"):
        load_manifest(write(tmp_path, "m.csv", "video,label\na.mp4,1\nb.mp4,999999999999\n"))
    assert time.perf_counter() - t0 < 1.0  # no 10^12-entry list on the way
    with pytest.raises(ManifestError, match=r"m.jsonl: line 1: label index 10000000000000000000000"):
        load_manifest(write(tmp_path, "m.jsonl", '{"video": "a.mp4", "label": 10000000000000000000000}\n'))


def test_non_ascii_digit_labels_are_names_and_errors_name_file_and_line(tmp_path):
    # '²'.isdigit() is True but int('²') fails: only ASCII digits make an index.
    m = load_manifest(write(tmp_path, "m.csv", "video,label\na.mp4,\u00b2\nb.mp4,\u0663\n"))
    assert m.classes == sorted(["\u00b2", "\u0663"]) and sorted(it.label for it in m.items) == [0, 1]
    with pytest.raises(ManifestError, match=r"m2.csv: line 3: label '\u00b2' is not one of the 2 given classes"):
        load_manifest(write(tmp_path, "m2.csv", "video,label\na.mp4,0\nb.mp4,\u00b2\n"), ["0", "1"])
    with pytest.raises(ManifestError, match=r"m.json: entry 1: label index must be >= 0"):
        load_manifest(write(tmp_path, "m.json", json.dumps([{"video": "a"}, {"video": "b", "label": -1}])))


def test_class_files_name_file_and_line(tmp_path):
    with pytest.raises(ManifestError, match=r"c.json: line 2: not valid JSON"):
        read_classes(write(tmp_path, "c.json", '["a",\n oops]'))
    (tmp_path / "c.txt").write_bytes(b"a\n\xff\n")
    with pytest.raises(ManifestError, match=r"c.txt: file is not UTF-8 text"):
        read_classes(str(tmp_path / "c.txt"))
    with pytest.raises(ManifestError, match=r"c2.txt: line 3: duplicate class name 'a'"):
        read_classes(write(tmp_path, "c2.txt", "a\nb\na\n"))
    with pytest.raises(ManifestError, match="no such file"):
        read_classes(str(tmp_path / "missing.txt"))


def test_manifests_that_are_not_regular_files_or_too_big_are_refused(tmp_path):
    fifo = tmp_path / "m.csv"
    os.mkfifo(fifo)  # open() on it would block until a writer comes: never opened for reading
    with pytest.raises(ManifestError, match="m.csv: cannot read manifest: not a regular file"):
        load_manifest(str(fifo))
    big = write(tmp_path, "big.csv", "video\n" + "a.mp4\n" * 100)
    with pytest.raises(ManifestError, match=r"big.csv: cannot read manifest: .*larger than the "
                                            r"limit of 100 bytes \(--max-bytes\)"):
        load_manifest(big, max_bytes=100)
    with pytest.raises(ManifestError, match="not a regular file"):
        read_classes("/dev/zero")


def test_storage_reads_only_regular_files_within_a_size_limit(tmp_path, s3_bucket):
    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)
    for call in (lambda p: storage.read_bytes(p), lambda p: storage.open_read(p),
                 lambda p: storage.upload_file(p, str(tmp_path / "copy"))):
        for path in (str(fifo), "/dev/zero"):
            with pytest.raises(storage.NotRegularFileError, match="not a regular file"):
                call(path)
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 1000)
    assert storage.read_bytes(str(f), max_bytes=1000) == b"x" * 1000
    with pytest.raises(storage.TooLargeError, match="larger than the limit of 999 bytes"):
        storage.read_bytes(str(f), max_bytes=999)
    storage.write_bytes(f"{s3_bucket}/f.bin", b"x" * 1000)
    assert storage.read_bytes(f"{s3_bucket}/f.bin", max_bytes=1000) == b"x" * 1000
    with pytest.raises(storage.TooLargeError, match="larger than the limit of 999 bytes"):
        storage.read_bytes(f"{s3_bucket}/f.bin", max_bytes=999)
