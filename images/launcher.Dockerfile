# syntax=docker/dockerfile:1.7
# The launcher image: what KFP steps run to render, submit and follow training jobs
# (umt.launch.run_training_job), to shard data and to write the report. Same umt package and
# pins as the training image, but no torch and no model stack (images/launcher-requirements.txt,
# written by images/lock.py) on a slim Python base: 0.5 GB over its base (BENCHMARKS.md), which
# matters on the CPU nodes that pipeline steps land on (cold pulls on every new node). Every
# model computation runs in a job on the training image.
#   images/build.sh        -> <repository>/umt-launcher:<version> and :<version>-<git sha>
# BASE_IMAGE: any Debian-like image with Python 3.10+ and pip on PATH.
ARG PYTHON_VERSION=3.11.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm
FROM ${BASE_IMAGE}

ARG UMT_UID=1000

# The umt-train image of the same build (umt.launch.images): what a launcher renders jobs with
# when neither the pipeline nor the caller names one. images/build.sh passes both.
ARG UMT_IMAGE_REPOSITORY=ghcr.io/umt-project
ARG UMT_IMAGE_TAG=0.0.0

ENV UMT_IMAGE_REPOSITORY=${UMT_IMAGE_REPOSITORY} \
    UMT_IMAGE_TAG=${UMT_IMAGE_TAG} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

WORKDIR /opt/umt
# --no-deps: the lock is complete (pip check proves it), so nothing unpinned, torch above all,
# can come in through a dependency.
COPY images/launcher-requirements.txt images/launcher-requirements.txt
RUN pip install --no-cache-dir --no-deps -r images/launcher-requirements.txt \
 && pip check

COPY pyproject.toml README.md ./
COPY umt ./umt
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import umt.launch, umt.pipeline.steps, kfp" \
 && umt --help > /dev/null \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

RUN useradd --uid "${UMT_UID}" --create-home --shell /bin/bash umt
USER ${UMT_UID}:${UMT_UID}
WORKDIR /home/umt
