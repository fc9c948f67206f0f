"""Both images built for real and run (issue 19): images/local-check/check.sh, as a test.

It builds the stand-in bases (Debian bookworm + Python, + the project's torch), then umt-train
and umt-launcher with images/build.sh --builder buildah, and runs the checks inside them as
UID 1000 with only the scratch folders writable (the script says what is emulated). It takes
~8 minutes the first time on 2 cores (BENCHMARKS.md, "Container images") and tens of GB of
disk (buildah's vfs driver copies every layer), so it runs only when asked for: root, buildah and debootstrap, and UMT_IMAGE_BUILD_CHECK=1. CI skips
it (it installs neither tool); images/local-check/check.sh is the same check as one command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "images" / "local-check" / "check.sh"
WORK = Path(os.environ.get("UMT_LOCAL_CHECK_DIR", "/var/tmp/umt-local-check"))


def _why_not() -> str | None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        return (f"needs {' and '.join(missing)} (apt-get install -y buildah debootstrap); "
                "images/local-check/check.sh is the same check")
    if os.geteuid() != 0:
        return "needs root: buildah builds RUN steps as root with chroot isolation"
    if os.environ.get("UMT_IMAGE_BUILD_CHECK") != "1":
        return ("builds both images for real (~8 min, tens of GB): set UMT_IMAGE_BUILD_CHECK=1, "
                "or run images/local-check/check.sh")
    return None


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
def test_both_images_build_and_run_as_uid_1000_with_a_read_only_root():
    (WORK / "result.json").unlink(missing_ok=True)
    out = subprocess.run(["bash", str(CHECK)], cwd=ROOT, capture_output=True, text=True,
                         timeout=5300, env={**os.environ, "UMT_LOCAL_CHECK_DIR": str(WORK)})
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    result = json.loads((WORK / "result.json").read_text())
    train, launcher = result["images"]["UMT_TRAIN_IMAGE"], result["images"]["UMT_LAUNCHER_IMAGE"]
    assert "/umt-train@sha256:" in train and "/umt-launcher@sha256:" in launcher
    # The launcher has no torch and no model stack: a fraction of the training image.
    assert result["bytes"]["umt-launcher"] * 4 < result["bytes"]["umt-train"], result["bytes"]
    train_log = (WORK / "run_train.log").read_text()
    assert '"step": 2' in train_log or "'step': 2" in train_log, train_log[-3000:]
    launcher_log = (WORK / "run_launcher.log").read_text()
    assert "kfp 2.17" in launcher_log and "image: " in launcher_log, launcher_log[-3000:]
