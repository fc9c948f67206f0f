# syntax=docker/dockerfile:1.7
# The training image: CUDA PyTorch, FFmpeg, the umt package (presets included), non-root.
#   images/build.sh        -> <repository>/umt-train:<version> and :<version>-<git sha>
# Context: the repository root (images/train.Dockerfile.dockerignore keeps it small).
# TORCH_VERSION / TORCHVISION_VERSION are the versions the test suite runs with (a test checks);
# pip is constrained to them so it never swaps the base image's CUDA build for another.
# BASE_IMAGE: any image with that torch/torchvision and pip on PATH (default: the CUDA PyTorch
# image; images/local-check/ builds on a local Debian base with the same torch from wheels).
ARG TORCH_VERSION=2.14.1
ARG CUDA_VERSION=13.0
ARG BASE_IMAGE=pytorch/pytorch:${TORCH_VERSION}-cuda${CUDA_VERSION}-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG TORCH_VERSION
ARG TORCHVISION_VERSION=0.29.1
ARG UMT_UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# FFmpeg: the PyAV and decord wheels bundle their own libraries; the system ones serve ffprobe
# (inspecting a bad video inside a pod) and source builds where no wheel exists (decord on
# aarch64). Unpinned on purpose: the base image tag fixes the Ubuntu release and with it this
# version; a distro version string here would break the build at every base bump.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/umt
COPY images/requirements.txt images/requirements.txt
# The base's torch must survive the install byte for byte (its CUDA build, not a PyPI one):
# its version and location before and after are compared.
RUN printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}" "${TORCHVISION_VERSION}" \
        > /tmp/base-constraints.txt \
 && python -c 'import torch, torchvision; print(torch.__version__, torch.__file__, torchvision.__version__)' \
        > /tmp/torch-before \
 && pip install --no-cache-dir -r images/requirements.txt -c /tmp/base-constraints.txt \
 && python -c 'import torch, torchvision; print(torch.__version__, torch.__file__, torchvision.__version__)' \
    | cmp - /tmp/torch-before \
 && rm /tmp/torch-before /tmp/base-constraints.txt

COPY pyproject.toml README.md ./
COPY umt ./umt
# --no-deps: every dependency is already pinned above; then prove the entry points import.
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import umt.train.stage1, umt.launch" \
 && torchrun --help > /dev/null

# Non-root, UID 1000 as the pods' securityContext expects (Ubuntu 24.04 bases already have a
# user 1000; reuse it then).
RUN mkdir -p /home/umt /workspace \
 && chown "${UMT_UID}:${UMT_UID}" /home/umt /workspace \
 && (getent passwd "${UMT_UID}" > /dev/null \
     || useradd --uid "${UMT_UID}" --home-dir /home/umt --shell /bin/bash umt)
ENV HOME=/home/umt
USER ${UMT_UID}:${UMT_UID}
WORKDIR /workspace
