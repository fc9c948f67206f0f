"""Container image names: one scheme shared by ``images/build.sh``, jobs and pipelines.

``images/build.sh`` tags every image ``<repository>/<name>:<version>`` and
``<repository>/<name>:<version>-<git sha>``. The ``<version>`` tag moves with every build of
that version (and ``IfNotPresent`` nodes keep whichever they pulled first): a multi-node job
could run mixed code, and KFP's cache keys (which hash the image name) would not change with
the code. So jobs and pipelines name the immutable one:

* :func:`image_tag`: ``UMT_IMAGE_TAG``, else ``<version>-<sha>`` of this source tree's commit
  (``-dirty`` for uncommitted changes, exactly as ``build.sh`` tags them), else -- an installed
  package without its git tree -- ``<version>``, with a warning;
* :func:`default_image`: ``UMT_TRAIN_IMAGE`` / ``UMT_LAUNCHER_IMAGE`` when set (full
  references, e.g. digest-pinned ``repo/umt-train@sha256:...`` from your build system), else
  ``<UMT_IMAGE_REPOSITORY or ghcr.io/umt-project>/<name>:<image_tag()>``.

A compiled pipeline carries its choice into its pods (``components/tasks.py``): every task
runs the launcher image resolved at compile time and gets ``UMT_TRAIN_IMAGE`` (and
``UMT_IMAGE_PULL_SECRETS``) in its environment, so the training image a launcher renders at run
time is the one the pipeline was compiled for, from the same registry. ``release_image`` is the
``<version>`` tag: what the reusable ``components/*/component.yaml`` files name (a file cannot
name the commit it is part of).
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "ghcr.io/umt-project"
TRAIN_IMAGE = "umt-train"
LAUNCHER_IMAGE = "umt-launcher"
REPOSITORY_ENV, TAG_ENV = "UMT_IMAGE_REPOSITORY", "UMT_IMAGE_TAG"
IMAGE_ENV = {TRAIN_IMAGE: "UMT_TRAIN_IMAGE", LAUNCHER_IMAGE: "UMT_LAUNCHER_IMAGE"}
PULL_SECRETS_ENV = "UMT_IMAGE_PULL_SECRETS"  # comma-separated Secret names
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding umt/


def package_version() -> str:
    try:
        return metadata.version("umt")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def image_repository() -> str:
    return os.environ.get(REPOSITORY_ENV, DEFAULT_REPOSITORY).rstrip("/")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=30)


@functools.lru_cache(maxsize=None)
def source_revision(root: Path = SOURCE_ROOT) -> str | None:
    """``<12-digit sha>[-dirty]`` of the git checkout ``root`` (as ``images/build.sh``
    computes it), or None when ``root`` is not the top of a git checkout (an installed
    package inside some other repository does not count)."""
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        sha = _git(root, "rev-parse", "--short=12", "HEAD").stdout.strip()
        if not sha:
            return None
        dirty = _git(root, "diff", "--quiet", "HEAD", "--").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


@functools.lru_cache(maxsize=None)
def _warn(message: str) -> None:
    log.warning(message)


def image_tag() -> str:
    """The tag of the umt images to use (see the module docstring)."""
    tag = os.environ.get(TAG_ENV, "").strip()
    if tag:
        return tag
    version, revision = package_version(), source_revision()
    if revision is None:
        _warn(f"no git checkout and no {TAG_ENV}: using the mutable tag {version}; set "
              f"{TAG_ENV}=<version>-<sha> (images/build.sh) to pin the images")
        return version
    if revision.endswith("-dirty"):
        _warn(f"uncommitted changes: images are tagged {version}-{revision}, which the next "
              "build of this tree replaces; commit (and build) to pin them")
    return f"{version}-{revision}"


def default_image(name: str = TRAIN_IMAGE) -> str:
    """The reference of umt image ``name`` (``umt-train``, ``umt-launcher``)."""
    override = os.environ.get(IMAGE_ENV.get(name, ""), "").strip()
    return override or f"{image_repository()}/{name}:{image_tag()}"


def release_image(name: str) -> str:
    """``<repository>/<name>:<version>``: the tag of a release, for reusable component files."""
    return f"{image_repository()}/{name}:{package_version()}"


def pull_secrets() -> list[str]:
    """The Secrets pods pull umt images with (``UMT_IMAGE_PULL_SECRETS``, comma-separated)."""
    return [s.strip() for s in os.environ.get(PULL_SECRETS_ENV, "").split(",") if s.strip()]
