"""Hostile input (issue 12 §4): WebDataset ``pipe:`` URLs, shell metacharacters and newlines in
paths, keys and captions, path traversal in tar members and pointer files, oversized fields,
YAML tags and alias bombs in config files.

Wanted: rejected with a clear error or neutralised (kept as plain data); nothing executed
(every test plants a canary that any shell command would create, and runs from a folder where a
relative one would land); nothing written outside the output prefix.

Elsewhere: pipe: and other schemes in storage (tests/test_storage.py::test_rejects_other_schemes)
and in dataset.json (tests/test_data_loader.py::test_dataset_json_with_shell_urls_is_rejected);
oc.env resolvers (tests/test_train_safety.py::test_bad_values_fail_when_the_config_loads,
test_oc_env_in_a_config_file_is_refused); pickles in checkpoints
(tests/test_checkpoint_loading.py::test_nothing_in_a_checkpoint_is_executed); FIFOs, /dev/zero
and huge inputs (tests/test_data_shard.py::test_inputs_that_are_not_regular_files_or_too_big_
fail_alone_and_fast, tests/test_data_manifest.py); user strings as argv items only
(tests/test_launch_values.py::test_user_strings_reach_the_container_only_as_argv_items).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from umt.cli import app
from umt.configs.schema import DataConfig
from umt.data import dataset_json
from umt.data.manifest import MAX_CAPTION_CHARS, ManifestError
from umt.data.shard import shard_dataset
from umt.data.stream import build_pretrain_loader
from umt.data.webdataset_loader import build_eval_loader
from umt.runtime import checkpoint

COMMAND = "touch canary"  # what every injected shell fragment would run


@pytest.fixture
def here(tmp_path, monkeypatch):
    """Run from an empty folder: a relative ``touch canary`` would create ``./canary``."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    assert not (folder / "canary").exists(), "a shell command from the input ran"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> bytes:
    from fuzz_corpus import FRAMES, SIZE, _encode

    from umt.data import synthetic

    return _encode(synthetic.render_clip(1, FRAMES, SIZE)[0])


# ---------------------------------------------------------------------------- pipe: URLs

def test_pipe_urls_are_refused_wherever_a_location_is_read(here, tmp_path):
    pipe = f"pipe:{COMMAND}"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "ok.mp4"}) + "\n" + json.dumps({"video": pipe}) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl: line 2: .*scheme 'pipe' rejected"):
        shard_dataset(str(manifest), str(tmp_path / "out"), progress=False)
    for args in ([pipe, str(tmp_path / "out")], [str(manifest), pipe]):
        with pytest.raises(ValueError, match="scheme 'pipe' rejected"):
            shard_dataset(*args, progress=False)
    with pytest.raises(ValueError, match="scheme 'pipe' rejected"):
        build_pretrain_loader(DataConfig(source=pipe), batch_size=1, num_frames=1, img_size=16)
    from umt.models import create_model
    with pytest.raises(ValueError, match="scheme 'pipe' rejected"):
        create_model("umt_vit_tiny_patch16_224", pretrained=pipe, num_frames=2, img_size=32)
    os.mkfifo(tmp_path / "fifo.pt")  # would block torch.load forever
    with pytest.raises(ValueError, match="not a regular file"):
        create_model("umt_vit_tiny_patch16_224", pretrained=str(tmp_path / "fifo.pt"),
                     num_frames=2, img_size=32)
    r = CliRunner().invoke(app, ["train", "stage1", "--config", "tiny", f"train.output_dir={pipe}",
                                 "train.steps=1"])
    assert r.exit_code == 2 and "scheme 'pipe' rejected" in r.output, r.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- shell metacharacters and newlines are data

NAMES = ["a;touch canary;b.mp4", "$(touch canary).mp4", "`touch canary`.mp4", "x | touch canary.mp4",
         "new\nline.mp4", "q'\"&><*?.mp4", "-rf --help.mp4"]
CAPTIONS = ["$(touch canary)", "`touch canary`", "a\nb; touch canary", "'; touch canary; '",
            "|| touch canary &", "\\\"\x00 ctrl", "-- --output=/etc"]


def test_metacharacters_in_paths_ids_and_captions_reach_the_shards_verbatim(here, tmp_path, mp4):
    src = tmp_path / "videos"
    src.mkdir()
    rows = []
    for i, (name, caption) in enumerate(zip(NAMES, CAPTIONS)):
        (src / name).write_bytes(mp4 + bytes([i]))  # distinct contents: distinct samples
        rows.append({"video": name, "caption": caption, "id": caption + name, "label": "a;b"})
    manifest = src / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    before = _files(tmp_path)
    r = CliRunner().invoke(app, ["shard", "--input", str(manifest), "--output", str(out),
                                 "--workers", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    info = dataset_json.load(str(out))
    assert info.num_samples == len(NAMES) and info.num_failed == 0
    # Written: shards, their stats and dataset.json under the output, nothing anywhere else.
    assert {f for f in _files(tmp_path) - before if not f.startswith("out")} == set()
    with tarfile.open(info.shard_uris()[0]) as tf:
        metas = [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    assert sorted(m["source"] for m in metas) == sorted(str(src / n) for n in NAMES)
    assert sorted(m["captions"][0] for m in metas) == sorted(CAPTIONS)
    assert sorted(m["id"] for m in metas) == sorted(c + n for c, n in zip(CAPTIONS, NAMES))
    loader = build_eval_loader(str(out), batch_size=len(NAMES), num_frames=2, img_size=16)
    assert sorted(c for b in loader for c in b["caption"]) == sorted(CAPTIONS)


# --------------------------------------------------------------- tar members and pointer files

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def _dataset_json(folder: Path, tar: str, num_samples: int) -> str:
    info = dataset_json.DatasetInfo(
        shards=[dataset_json.ShardInfo(uri=tar, num_samples=num_samples,
                                       num_bytes=(folder / tar).stat().st_size)],
        classes=["a"], num_samples=num_samples)
    dataset_json.save(info, str(folder / "dataset.json"))
    return str(folder / "dataset.json")


def _member(name: str, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_traversal_links_and_metacharacters_in_tar_members_write_nothing(here, tmp_path, mp4):
    """Loaders stream tar members in memory: a member named ../../x, /abs/x, a symlink or a
    hardlink out of the tree is never materialised; keys are plain strings."""
    target = tmp_path / "outside.txt"
    target.write_text("secret")
    members = [(_member("good.mp4"), mp4), (_member("good.cls"), b"0"),
               (_member("../../escaped.mp4"), mp4), (_member("/tmp/umt-abs-escaped.mp4"), mp4),
               (_member("a/../../../up.mp4"), mp4),
               (_member("$(touch canary).mp4"), mp4), (_member("$(touch canary).txt"), CAPTIONS[0].encode()),
               (_member("link.mp4", type=tarfile.SYMTYPE, linkname=str(target)), None),
               (_member("hard.mp4", type=tarfile.LNKTYPE, linkname="../../outside.txt"), None),
               (_member("dev.mp4", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None)]
    _tar(tmp_path / "evil.tar", members)
    _dataset_json(tmp_path, "evil.tar", 6)
    before = _files(tmp_path.parent)
    loader = build_eval_loader(str(tmp_path / "dataset.json"), batch_size=8, num_frames=2, img_size=16)
    batches = list(loader)
    keys = sorted(k for b in batches for k in b["key"])
    assert keys == sorted(["good", "../../escaped", "/tmp/umt-abs-escaped", "a/../../../up",
                           "$(touch canary)"])
    assert CAPTIONS[0] in [c for b in batches for c in b["caption"]]
    assert _files(tmp_path.parent) == before and not Path("/tmp/umt-abs-escaped.mp4").exists()
    assert target.read_text() == "secret"


def test_a_latest_pointer_outside_the_run_is_ignored(tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    checkpoint.save(str(elsewhere), 9, {"model": {"w": torch.ones(2)}})
    run = tmp_path / "run"
    checkpoint.save(str(run), 2, {"model": {"w": torch.zeros(2)}})
    for pointer in ["../../elsewhere/checkpoints/step_00000009.pt",
                    str(elsewhere / "checkpoints" / "step_00000009.pt"), "/step_00000009.pt"]:
        (run / "checkpoints" / "latest").write_text(pointer)
        with caplog.at_level(logging.WARNING, logger="umt.runtime.checkpoint"):
            state = checkpoint.load_latest(str(run))
        assert state["step"] == 2 and state["uri"] == str(run / "checkpoints" / "step_00000002.pt")
        assert "is not a checkpoint name" in caplog.text


# ------------------------------------------------------------------------ oversized fields

def _one_sample_shard(folder: Path, mp4: bytes, samples: list[dict]) -> str:
    import webdataset as wds

    with open(folder / "s.tar", "wb") as f, wds.TarWriter(f) as w:
        for s in samples:
            w.write({"mp4": mp4, "cls": b"0", **s})
    return _dataset_json(folder, "s.tar", len(samples))


def test_oversized_captions_and_metadata_are_refused(tmp_path, mp4):
    long = "word " * (MAX_CAPTION_CHARS // 5 + 1)
    source = _one_sample_shard(tmp_path, mp4, [
        {"__key__": "ok", "json": json.dumps({"captions": ["fine"]}).encode()},
        {"__key__": "long-caption", "json": json.dumps({"captions": [long]}).encode()},
        {"__key__": "long-txt", "txt": long.encode() * 4},
        {"__key__": "huge-json", "json": json.dumps({"captions": ["x"], "pad": "y" * (5 << 20)}).encode()},
        {"__key__": "deep-json", "json": b"[" * 100_000 + b"]" * 100_000},
    ])
    loader = build_eval_loader(source, batch_size=8, num_frames=2, img_size=16)
    assert [k for b in loader for k in b["key"]] == ["ok"]
    assert dict(loader.skip_reasons) == {"bad captions": 2, "bad json": 2}

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "a.mp4"}) + "\n" +
                        json.dumps({"video": "b.mp4", "caption": long}) + "\n")
    with pytest.raises(ManifestError, match=rf"m.jsonl: line 2: a caption of {len(long)} "
                                            rf"characters, longer than the limit"):
        shard_dataset(str(manifest), str(tmp_path / "out"), progress=False)

    deep = tmp_path / "deep" / "dataset.json"
    deep.parent.mkdir()
    deep.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(dataset_json.DatasetJsonError, match="nested too deeply"):
        dataset_json.load(str(deep))
    huge = tmp_path / "huge" / "dataset.json"
    huge.parent.mkdir()
    with open(huge, "wb") as f:  # sparse: nothing is written, nothing may be read
        f.truncate(dataset_json.MAX_BYTES + 1)
    with pytest.raises(dataset_json.DatasetJsonError, match="larger than the limit"):
        dataset_json.load(str(huge))


# -------------------------------------------------------------------------- YAML config files

def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntrain:\n  steps: 1\nmodel:\n  extra: *a{levels - 1}\n"


CONFIGS = {
    "apply": f'train: !!python/object/apply:os.system ["{COMMAND}"]\n',
    "name": "train:\n  output_dir: !!python/name:os.system\n",
    "new": f'model: !!python/object/new:subprocess.Popen [["sh", "-c", "{COMMAND}"]]\n',
    "bomb": _bomb(),  # 10^9 strings if expanded
    "not-yaml": "train: [1, 2\n",
    "list": "- train\n- model\n",
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_yaml_tags_and_alias_bombs_in_config_files_are_refused(here, tmp_path, kind):
    from umt.configs import Stage1Config, load_config
    from umt.launch.stages import job_config_args

    path = tmp_path / f"{kind}.yaml"
    path.write_text(CONFIGS[kind])
    want = "must hold a mapping" if kind == "list" else "is not a umt config"
    with pytest.raises(ValueError, match=want):
        load_config(Stage1Config, "stage1", str(path))
    with pytest.raises(ValueError, match=want):
        job_config_args(str(path), [])  # what umt job render flattens, with or without checks
    for command in (["train", "stage1"], ["job", "render", "stage1"]):
        r = CliRunner().invoke(app, [*command, "--config", str(path)])
        assert r.exit_code == 2 and want in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
