#!/usr/bin/env bash
# Build both images for real on this machine, then run them: the local build check.
#
#   sudo images/local-check/check.sh          # root, buildah and debootstrap (apt-get install
#                                             # -y buildah debootstrap); ~8 min the first time
#
# No registry base image is needed (none can be pulled here): the bases are stand-ins built from
# Debian's packages (base.Containerfile): Debian bookworm's Python 3.11 in a root-owned venv,
# plus, for umt-train, the project's torch/torchvision (the CUDA wheels, from this machine's
# local wheel index when it has one, UMT_LOCAL_WHEEL_INDEX; else from PyPI). Then
# images/build.sh --builder buildah builds umt-train and umt-launcher on them, and inside each
# image, as UID 1000, with the root filesystem read-only and only the pods' scratch folders
# writable (emulated, see run_in below):
#   umt-train:    umt --help, torchrun --help, decord/PyAV/ffprobe load, and a 2-step tiny
#                 Stage 1 under torchrun from a shard written by `umt shard` in the image;
#   umt-launcher: no torch, imports umt.launch, umt.pipeline.steps and kfp, shards videos
#                 (`umt shard`, as the pipeline's shard step) and renders a job (`umt job
#                 render`), also pinned to the digest build.sh printed.
# Writes $WORK/result.json (build seconds, image sizes, digests; tests/test_images_build.py
# reads it) and prints it. buildah runs with STORAGE_DRIVER=vfs and BUILDAH_ISOLATION=chroot
# (no overlay, no user namespaces needed; `podman run` cannot set rlimits here).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

WORK="${UMT_LOCAL_CHECK_DIR:-/var/tmp/umt-local-check}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
REPOSITORY="${UMT_LOCAL_CHECK_REPOSITORY:-localhost/umt-check}"
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"

die() { echo "check.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (buildah builds RUN steps as root with chroot isolation)"
for tool in buildah debootstrap; do
  command -v "$tool" > /dev/null || die "needs $tool: apt-get install -y buildah debootstrap"
done

arg() { sed -n "s/^ARG $1=\(.*\)$/\1/p" "$2" | head -n1; }
TORCH_VERSION="$(arg TORCH_VERSION images/train.Dockerfile)"
TORCHVISION_VERSION="$(arg TORCHVISION_VERSION images/train.Dockerfile)"
# The bases are tagged by what defines them, and reused when they exist (UMT_REBUILD_BASES=1 to
# rebuild): each is minutes and gigabytes.
BASE_ID="$(cat images/local-check/base.Containerfile <(echo "$TORCH_VERSION $TORCHVISION_VERSION") \
           | sha256sum | cut -c1-12)"
PYTHON_BASE="localhost/umt-local/python:bookworm-${BASE_ID}"
TORCH_BASE="localhost/umt-local/torch:${TORCH_VERSION}-${BASE_ID}"
CONTEXT="$WORK/context"
mkdir -p "$CONTEXT/extra-ca"
declare -A SECONDS_OF

timed() {  # timed NAME COMMAND...: run, remember its wall seconds
  local name="$1" start
  shift
  start="$(date +%s)"
  "$@"
  SECONDS_OF[$name]=$(( $(date +%s) - start ))
  echo "== $name: ${SECONDS_OF[$name]} s" >&2
}

# -- 1. the stand-in bases ------------------------------------------------------------------
rootfs() {
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$WORK/rootfs" "$MIRROR" > "$WORK/debootstrap.log"
  tar -C "$WORK/rootfs" -cf "$CONTEXT/rootfs.tar.part" .
  mv "$CONTEXT/rootfs.tar.part" "$CONTEXT/rootfs.tar"
  rm -rf "$WORK/rootfs"
}
if [ -s "$CONTEXT/rootfs.tar" ]; then SECONDS_OF[debootstrap]=0; else timed debootstrap rootfs; fi
# This machine's extra CAs (a TLS-re-signing egress proxy): see base.Containerfile.
find "$CONTEXT/extra-ca" -mindepth 1 -delete
cp /usr/local/share/ca-certificates/*.crt "$CONTEXT/extra-ca/" 2>/dev/null || true

# The local wheel index: a folder with simple/<name>/index.html and files/ (pip's layout).
INDEX="${UMT_LOCAL_WHEEL_INDEX:-/opt/pypi-more}"
local_wheels=()
if [ -f "$INDEX/simple/torch/index.html" ]; then
  local_wheels=(-v "$INDEX:$INDEX:ro" --build-arg "LOCAL_INDEX=--index-url file://$INDEX/simple"
                --build-arg "LOCAL_WHEELS=$(find "$INDEX/simple" -mindepth 1 -maxdepth 1 \
                                            -name 'nvidia-*' -printf '%f ' | sort)")
fi
base_build() {  # base_build NAME IMAGE BUILDAH-ARGS...
  local name="$1" image="$2"
  shift 2
  if [ "${UMT_REBUILD_BASES:-0}" != 1 ] && buildah inspect --type image "$image" > /dev/null 2>&1
  then
    SECONDS_OF[$name]=0  # reused
    return
  fi
  timed "$name" buildah build --format docker -f images/local-check/base.Containerfile \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION" \
    -t "$image" "$@" "$CONTEXT"
}
base_build base_python "$PYTHON_BASE" --target python
base_build base_torch "$TORCH_BASE" --target torch "${local_wheels[@]}"

# -- 2. the images, with the project's own build script --------------------------------------
# UMT_LOCAL_CHECK_REUSE_IMAGES=1: run the checks on the images of the last run (to debug them).
export UMT_IMAGE_REPOSITORY="$REPOSITORY"
if [ "${UMT_LOCAL_CHECK_REUSE_IMAGES:-0}" != 1 ]; then
  timed build_train images/build.sh --builder buildah --train-base "$TORCH_BASE" \
    --digest-file "$WORK/train.env" train
  timed build_launcher images/build.sh --builder buildah --launcher-base "$PYTHON_BASE" \
    --digest-file "$WORK/launcher.env" launcher
fi
TRAIN_REF="$(cut -d= -f2- "$WORK/train.env")"
LAUNCHER_REF="$(cut -d= -f2- "$WORK/launcher.env")"

# -- 3. inside the images ----------------------------------------------------------------------
# What a pod has (umt.launch.request): UID 1000, readOnlyRootFilesystem, emptyDir volumes on
# /tmp and $HOME=/home/umt, a memory emptyDir on /dev/shm. buildah run has no read-only root,
# so it is emulated: fresh tmpfs (mode 1777, like an emptyDir) on /tmp and /home/umt; every
# other directory UID 1000 could write to (its own /workspace, world-writable ones such as
# /var/tmp, /run/lock) gets an empty read-only bind mount over it (only empty ones: a
# non-empty one fails the check); then, as UID 1000, `find -writable` must find nothing
# outside /tmp, /home/umt and /dev (/dev/shm and the devices are buildah's own mounts). The
# hostname resolves to 127.0.0.1 (the kubelet's /etc/hosts entry). Not emulated: the pod's
# resource limits, its dropped capabilities and seccomp profile, the network policy.
EMPTY="$WORK/empty-readonly"
mkdir -p "$EMPTY" && chmod 0555 "$EMPTY"

run_in() {  # run_in IMAGE_REF WORKDIR SCRIPT
  local ref="$1" workdir="$2" script="$3" ctr dirs mounts=() d
  # A pod's /etc/hosts names its own hostname (the kubelet writes it); torchrun's rendezvous
  # needs it to resolve. buildah's container gets one only when told.
  ctr="$(buildah from --pull-never --add-host umt-check:127.0.0.1 "$ref")"
  # As root: what UID 1000 could write outside the scratch folders, by permission.
  dirs="$(buildah run --user 0:0 "$ctr" -- find / -xdev \( -path /proc -o -path /sys \
            -o -path /dev -o -path /tmp -o -path /home/umt \) -prune -o -type d \
            \( -perm -0002 -o -user 1000 \) -print)" || { buildah rm "$ctr"; return 1; }
  for d in $dirs; do
    if [ -n "$(buildah run --user 0:0 "$ctr" -- find "$d" -mindepth 1 -maxdepth 1 -print -quit)" ]
    then
      buildah rm "$ctr" > /dev/null
      die "$ref: $d is writable by UID 1000 and not empty (read-only in a pod)"
    fi
    mounts+=(--mount "type=bind,source=$EMPTY,destination=$d,ro")
  done
  echo "== $ref: read-only over: ${dirs//$'\n'/ }" >&2
  local rc=0
  buildah run --user 1000:1000 --workingdir "$workdir" --hostname umt-check \
    --mount type=tmpfs,destination=/tmp,tmpfs-mode=1777 \
    --mount type=tmpfs,destination=/home/umt,tmpfs-mode=1777 \
    "${mounts[@]}" "$ctr" -- bash -c "$script" || rc=$?
  buildah rm "$ctr" > /dev/null
  return "$rc"
}

WRITABLE='
w="$({ find / -xdev \( -path /proc -o -path /sys -o -path /dev \) -prune -o -writable -print \
        2> /dev/null || true; } | grep -Ev "^/(tmp|home/umt)(/|$)" || true)"
[ -z "$w" ] || { echo "writable outside the scratch folders: $w"; exit 1; }
[ "$(id -u):$(id -g)" = 1000:1000 ]
touch /tmp/.w /home/umt/.w
'
TRAIN_CHECK="set -euxo pipefail
$WRITABLE
echo \"cwd \$PWD, HOME=\$HOME\"
umt --help > /dev/null
torchrun --help > /dev/null
python -c 'import torch, torchvision, decord, av, timm, open_clip, transformers; print(\"torch\", torch.__version__, torch.__file__)'
ffprobe -version | head -n1
umt synthetic -o /tmp/videos -n 8
umt shard -i /tmp/videos/manifest.csv -o /tmp/shards --samples-per-shard 4 --workers 1
torchrun --standalone --nproc-per-node 1 -m umt.train.stage1 --config tiny \
  data.source=/tmp/shards/dataset.json data.num_workers=1 train.output_dir=/tmp/run \
  train.steps=2 train.log_every=1 train.ckpt_every=2
tail -n1 /tmp/run/metrics.jsonl
ls /tmp/run/checkpoints
"
LAUNCHER_CHECK="set -euxo pipefail
$WRITABLE
python -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)'
python -c 'import umt.launch, umt.pipeline.steps, kfp, kfp.kubernetes; print(\"kfp\", kfp.__version__)'
python -c 'import sys, umt.cli; heavy = [m for m in (\"torch\", \"timm\", \"transformers\") if m in sys.modules]; sys.exit(1 if heavy else 0)'
# The pipeline's shard step runs in this image: videos -> shards without torch.
umt synthetic -o /tmp/videos -n 8
umt shard -i /tmp/videos/manifest.csv -o /tmp/shards --samples-per-shard 4 --workers 1
umt job render stage1 -c tiny -g 0 -p cpu -o s3://bucket/runs/check --backend pytorchjob \
  > /tmp/job.yaml
grep -q '^kind: PyTorchJob' /tmp/job.yaml
grep -m1 'image: ' /tmp/job.yaml
# The digest line images/build.sh printed, as a pipeline task gets it: the job pins it.
UMT_TRAIN_IMAGE='$TRAIN_REF' umt job render stage1 -c tiny -g 0 -p cpu -o s3://bucket/runs/check \
  --backend pytorchjob | grep -F 'image: $TRAIN_REF'
"
timed run_train run_in "$TRAIN_REF" /workspace "$TRAIN_CHECK" > >(tee "$WORK/run_train.log") 2>&1
timed run_launcher run_in "$LAUNCHER_REF" /home/umt "$LAUNCHER_CHECK" \
  > >(tee "$WORK/run_launcher.log") 2>&1

# -- 4. sizes ----------------------------------------------------------------------------------
size_of() {  # the image's uncompressed size in bytes, as buildah reports it ("6.2 GB")
  buildah images --json "$1" | python3 -c '
import json, sys
number, unit = json.load(sys.stdin)[0]["size"].split()
scale = {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
print(int(float(number) * scale))'
}
python3 - "$WORK/result.json" <<EOF
import json, sys
result = {
    "seconds": {$(for k in "${!SECONDS_OF[@]}"; do printf '"%s": %s, ' "$k" "${SECONDS_OF[$k]}"; done)},
    "bytes": {"umt-train": $(size_of "$TRAIN_REF"), "umt-launcher": $(size_of "$LAUNCHER_REF"),
              "base-torch": $(size_of "$TORCH_BASE"), "base-python": $(size_of "$PYTHON_BASE")},
    "images": {"UMT_TRAIN_IMAGE": "$TRAIN_REF", "UMT_LAUNCHER_IMAGE": "$LAUNCHER_REF"},
    "bases": {"train": "$TORCH_BASE", "launcher": "$PYTHON_BASE"},
}
json.dump(result, open(sys.argv[1], "w"), indent=1, sort_keys=True)
print(json.dumps(result, indent=1, sort_keys=True))
EOF
