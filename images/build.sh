#!/usr/bin/env bash
# Build (and optionally push) the umt images, tagged from the package version and git SHA:
#   <repository>/umt-train:<version>      <repository>/umt-train:<version>-<sha>[-dirty]
#   <repository>/umt-launcher:<version>   <repository>/umt-launcher:<version>-<sha>[-dirty]
# Jobs and compiled pipelines name the <version>-<sha> tag (immutable; umt/launch/images.py
# computes the same sha); <version> is what the reusable component.yaml files and the shipped
# kubectl manifests name. The launcher image records its sibling training image's tag.
#
#   images/build.sh                         # build both with docker, podman or buildah
#   images/build.sh --push                  # build and push
#   images/build.sh --dry-run               # print the commands only
#   images/build.sh --builder buildah train # choose the tool (default: the first one found)
#   images/build.sh --train-base IMAGE --launcher-base IMAGE   # other base images
#   UMT_IMAGE_REPOSITORY=registry.example.com/ml images/build.sh --push --digest-file images.env
#
# At the end it prints one line per image built, its digest reference:
#   UMT_TRAIN_IMAGE=<repository>/umt-train@sha256:<digest>
#   UMT_LAUNCHER_IMAGE=<repository>/umt-launcher@sha256:<digest>
# which are the variables umt.launch.images reads: export them (or source --digest-file)
# before `umt job`, `umt run`/`umt submit` or compiling a pipeline, and every task and job is
# pinned to exactly these images. With --push the digest is the registry's; without it
# (podman/buildah only; docker has no digest before a push) it is the local store's, which a
# push may change (layers are recompressed).
#
# The base images are build arguments (BASE_IMAGE) with the Dockerfiles' defaults: the CUDA
# PyTorch image for umt-train, python:slim for umt-launcher. podman and buildah build with
# --format docker: the OCI format drops the Dockerfiles' SHELL. buildah's own settings come
# from its environment (STORAGE_DRIVER=vfs, BUILDAH_ISOLATION=chroot where no overlay or
# namespaces are available; images/local-check/check.sh does that). buildah caches no layers
# (its default): one working container per build, one new layer, which is what keeps its vfs
# driver (a full copy per layer) within a few times the image's size on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 [--push] [--dry-run] [--builder docker|podman|buildah] [--train-base IMAGE]" \
       "[--launcher-base IMAGE] [--digest-file FILE] [train] [launcher]" >&2
  exit 2
}

BUILDER="${UMT_IMAGE_BUILDER:-${DOCKER:-}}"
REPOSITORY="${UMT_IMAGE_REPOSITORY:-ghcr.io/umt-project}"
TRAIN_BASE="${UMT_TRAIN_BASE_IMAGE:-}"
LAUNCHER_BASE="${UMT_LAUNCHER_BASE_IMAGE:-}"
DIGEST_FILE=""
PUSH=0
DRY_RUN=0
IMAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --push) PUSH=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --builder) [ $# -ge 2 ] || usage; BUILDER="$2"; shift ;;
    --train-base) [ $# -ge 2 ] || usage; TRAIN_BASE="$2"; shift ;;
    --launcher-base) [ $# -ge 2 ] || usage; LAUNCHER_BASE="$2"; shift ;;
    --digest-file) [ $# -ge 2 ] || usage; DIGEST_FILE="$2"; shift ;;
    train|launcher) IMAGES+=("$1") ;;
    *) usage ;;
  esac
  shift
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(train launcher)

if [ -z "$BUILDER" ]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" > /dev/null 2>&1; then BUILDER="$candidate"; break; fi
  done
  BUILDER="${BUILDER:-docker}"  # --dry-run on a machine with none of them
fi
case "$(basename "$BUILDER")" in
  docker) KIND=docker ;;
  podman) KIND=podman ;;
  buildah) KIND=buildah ;;
  *) echo "$0: --builder must be docker, podman or buildah, not $BUILDER" >&2; exit 2 ;;
esac

VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
SHA="$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)"
# A build from uncommitted changes must not masquerade as the commit.
if [ "$SHA" != nogit ] && ! git diff --quiet HEAD -- 2>/dev/null; then
  SHA="${SHA}-dirty"
fi

run() {
  echo "+ $*"
  if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

# The digest reference of image $1 (pushed as $2 when $3 = 1), or "" where there is none.
digest_of() {
  local name="$1" ref="$2" pushed="$3" file digest=""
  if [ "$KIND" = docker ]; then
    [ "$pushed" -eq 1 ] || return 0
    digest="$("$BUILDER" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' \
      "$ref" | grep -m1 "^${name}@" | cut -d@ -f2 || true)"
  elif [ "$pushed" -eq 1 ]; then
    digest="$(cat "$DIGEST_DIR/$(basename "$name")")"
  elif [ "$KIND" = buildah ]; then
    digest="$("$BUILDER" images --no-trunc --format '{{.Digest}}' "$ref" | head -n1)"
  else
    digest="$("$BUILDER" image inspect --format '{{.Digest}}' "$ref")"
  fi
  [ -z "$digest" ] || echo "${name}@${digest}"
}

DIGEST_DIR="$(mktemp -d)"
trap 'rm -rf "$DIGEST_DIR"' EXIT
DIGEST_LINES=()
for image in "${IMAGES[@]}"; do
  name="${REPOSITORY}/umt-${image}"
  base="$TRAIN_BASE"
  [ "$image" = launcher ] && base="$LAUNCHER_BASE"
  extra=()
  [ -z "$base" ] || extra+=(--build-arg "BASE_IMAGE=${base}")
  case "$KIND" in
    podman) extra+=(--format docker) ;;
    buildah) extra+=(--format docker) ;;
  esac
  run "$BUILDER" build --file "images/${image}.Dockerfile" "${extra[@]}" \
    --build-arg "UMT_IMAGE_REPOSITORY=${REPOSITORY}" --build-arg "UMT_IMAGE_TAG=${VERSION}-${SHA}" \
    --label "org.opencontainers.image.version=${VERSION}" \
    --label "org.opencontainers.image.revision=${SHA}" \
    --tag "${name}:${VERSION}" --tag "${name}:${VERSION}-${SHA}" .
  if [ "$PUSH" -eq 1 ]; then
    run "$BUILDER" push "${name}:${VERSION}"
    if [ "$KIND" = docker ]; then
      run "$BUILDER" push "${name}:${VERSION}-${SHA}"
    else
      run "$BUILDER" push --digestfile "$DIGEST_DIR/umt-${image}" "${name}:${VERSION}-${SHA}"
    fi
  fi
  if [ "$DRY_RUN" -eq 0 ]; then
    ref="$(digest_of "$name" "${name}:${VERSION}-${SHA}" "$PUSH")"
    var="UMT_TRAIN_IMAGE"
    [ "$image" = launcher ] && var="UMT_LAUNCHER_IMAGE"
    if [ -n "$ref" ]; then
      DIGEST_LINES+=("${var}=${ref}")
    else
      echo "# ${name}: no digest before a push with docker (use --push)" >&2
    fi
  fi
done

if [ ${#DIGEST_LINES[@]} -gt 0 ]; then
  [ "$PUSH" -eq 1 ] || echo "# local digests (not pushed): a push may change them" >&2
  printf '%s\n' "${DIGEST_LINES[@]}"
  [ -z "$DIGEST_FILE" ] || printf '%s\n' "${DIGEST_LINES[@]}" > "$DIGEST_FILE"
fi
