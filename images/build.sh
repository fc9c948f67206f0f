#!/usr/bin/env bash
# Build (and optionally push) the umt images, tagged from the package version and git SHA:
#   <repository>/umt-train:<version>      <repository>/umt-train:<version>-<sha>[-dirty]
#   <repository>/umt-launcher:<version>   <repository>/umt-launcher:<version>-<sha>[-dirty]
# Jobs and compiled pipelines name the <version>-<sha> tag (immutable; umt/launch/images.py
# computes the same sha); <version> is what the reusable component.yaml files and the shipped
# kubectl manifests name. The launcher image records its sibling training image's tag.
#
#   images/build.sh                 # build both with docker
#   images/build.sh --push          # build and push
#   images/build.sh --dry-run       # print the commands only
#   UMT_IMAGE_REPOSITORY=registry.example.com/ml DOCKER=podman images/build.sh train
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-docker}"
REPOSITORY="${UMT_IMAGE_REPOSITORY:-ghcr.io/umt-project}"
PUSH=0
DRY_RUN=0
IMAGES=()
for arg in "$@"; do
  case "$arg" in
    --push) PUSH=1 ;;
    --dry-run) DRY_RUN=1 ;;
    train|launcher) IMAGES+=("$arg") ;;
    *) echo "usage: $0 [--push] [--dry-run] [train] [launcher]" >&2; exit 2 ;;
  esac
done
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(train launcher)

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

for image in "${IMAGES[@]}"; do
  name="${REPOSITORY}/umt-${image}"
  run "$DOCKER" build --file "images/${image}.Dockerfile" \
    --build-arg "UMT_IMAGE_REPOSITORY=${REPOSITORY}" --build-arg "UMT_IMAGE_TAG=${VERSION}-${SHA}" \
    --label "org.opencontainers.image.version=${VERSION}" \
    --label "org.opencontainers.image.revision=${SHA}" \
    --tag "${name}:${VERSION}" --tag "${name}:${VERSION}-${SHA}" .
  if [ "$PUSH" -eq 1 ]; then
    run "$DOCKER" push "${name}:${VERSION}"
    run "$DOCKER" push "${name}:${VERSION}-${SHA}"
  fi
done
