"""Container image names: one scheme shared by ``images/build.sh``, jobs and pipelines.

``images/build.sh`` tags every image ``<repository>/<name>:<version>`` and
``<repository>/<name>:<version>-<git sha>``. Jobs and pipeline image parameters default to the
``<version>`` tag of the installed package, so a release of the library and its images move
together; set ``UMT_IMAGE_REPOSITORY`` (or pass ``--image``) to use your own registry.
"""

from __future__ import annotations

import os
from importlib import metadata

DEFAULT_REPOSITORY = "ghcr.io/umt-project"
TRAIN_IMAGE = "umt-train"
LAUNCHER_IMAGE = "umt-launcher"


def package_version() -> str:
    try:
        return metadata.version("umt")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


def image_repository() -> str:
    return os.environ.get("UMT_IMAGE_REPOSITORY", DEFAULT_REPOSITORY).rstrip("/")


def default_image(name: str = TRAIN_IMAGE) -> str:
    return f"{image_repository()}/{name}:{package_version()}"
