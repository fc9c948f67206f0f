# syntax=docker/dockerfile:1.7
# The launcher image: what KFP steps run to render, submit and follow PyTorchJobs
# (umt.launch.run_training_job), to shard data and to evaluate on CPU. Same umt package and
# pins as the training image, but CPU PyTorch on a slim Python base: ~1.5 GB instead of ~10,
# which matters on the CPU nodes that pipeline steps land on (cold pulls on every new node).
#   images/build.sh        -> <repository>/umt-launcher:<version> and :<version>-<git sha>
ARG PYTHON_VERSION=3.11.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
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
# CPU-only wheels: no CUDA libraries in an image that never sees a GPU.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY images/requirements.txt images/requirements.txt
RUN printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}" "${TORCHVISION_VERSION}" \
        > /tmp/base-constraints.txt \
 && pip install --no-cache-dir -r images/requirements.txt -c /tmp/base-constraints.txt

COPY pyproject.toml README.md ./
COPY umt ./umt
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import umt.launch, umt.train.stage1" \
 && umt --help > /dev/null

RUN useradd --uid "${UMT_UID}" --create-home --shell /bin/bash umt
USER ${UMT_UID}:${UMT_UID}
WORKDIR /home/umt
