"""The package's import rules (DESIGN.md "One direction of dependency"), checked on the source:

- evaluation never imports training (``umt.eval`` -> ``umt.runtime``, never ``umt.train``);
- models never touch storage (a job reads checkpoints through ``umt.runtime.weights``);
- a job process (every catalogue stage's module) never imports the launcher, the CLI, the
  pipeline code or the cluster clients, however deep the import (a pod has none of them);
- config schemas load without torch, timm, open_clip or transformers (the launcher image and
  ``umt job render`` have none of them).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UMT = ROOT / "umt"
HEAVY = ("torch", "timm", "open_clip", "transformers")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, also those inside functions, with
    ``from umt import storage`` read as ``umt.storage``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def offenders(package: str, forbidden: str) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {name}"
            for path in sorted((UMT / package).rglob("*.py"))
            for line, name in imported_modules(path)
            if name == forbidden or name.startswith(forbidden + ".")]


def test_eval_never_imports_train():
    assert offenders("eval", "umt.train") == []


def test_models_never_import_storage():
    assert offenders("models", "umt.storage") == []
    # nor name it (a string import would hide the dependency from the check above)
    assert [p.name for p in (UMT / "models").rglob("*.py")
            if "umt.storage" in p.read_text() or "from umt import storage" in p.read_text()] == []


def test_the_import_walk_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from umt import storage\n    import umt.train.loop\n")
    assert [m for _, m in imported_modules(f)] == ["umt", "umt.storage", "umt.train.loop"]


def module_file(name: str) -> Path | None:
    """The source file of the ``umt`` module ``name``, or None (not ours, or an attribute)."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def import_closure(roots: list[str]) -> dict[str, str]:
    """Every module name reachable from ``roots`` through the imports of our own files (also
    those inside functions, and every package ``__init__`` on the way), mapped to the first
    file that imports it: a static, complete version of "what could this process import"."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(".".join(parts[:i]))
            if path is None or str(path) in seen.values():
                continue
            seen.setdefault(".".join(parts[:i]), "(root)")
            for _, imported in imported_modules(path):
                if imported not in seen:
                    seen[imported] = str(path.relative_to(ROOT))
                    todo.append(imported)
    return seen


def test_job_processes_never_import_the_launcher():
    from umt import catalogue

    modules = sorted({stage.module for stage in catalogue.STAGES.values()})
    reached = import_closure(modules)
    assert "umt.train.loop" in reached and "umt.runtime.entry" in reached  # the walk follows
    forbidden = ("umt.launch", "umt.cli", "umt.pipeline", "kubernetes", "kfp")
    bad = {name: by for name, by in reached.items()
           if name.split(".")[0] in forbidden or name.startswith(forbidden)}
    assert bad == {}


# Run in a fresh interpreter whose import system refuses the heavy libraries, as an image
# without them would.
BLOCKED = textwrap.dedent(f"""
    import importlib.abc, sys

    HEAVY = {HEAVY!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ModuleNotFoundError(name + " is blocked in this test", name=name)
            return None

    sys.meta_path.insert(0, Block())
""")

LOAD_CONFIGS = textwrap.dedent("""
    from umt import catalogue
    from umt.configs import load_config
    from umt.configs.loader import list_presets, preset_source

    def required(stage):
        # what `umt eval --model --data` passes; training presets name their own data
        return ["data.source=x/dataset.json", "model.pretrained=x/ckpt.pt"] if stage.kind == "eval" else []

    for stage in catalogue.STAGES.values():
        schema = stage.config_schema()
        assert "tiny" in list_presets(preset_source(schema, stage.name)[0]), stage.name
        load_config(schema, stage.name, "tiny", required(stage))
        print("loaded", stage.name)
""")

# The launcher's check of a stage config, as `umt job render` runs it.
VALIDATE = textwrap.dedent("""
    from umt.launch.stages import validate_stage_config

    for stage in catalogue.STAGES.values():
        validate_stage_config(stage.name, "tiny", required(stage))
        print("validated", stage.name)
""")

NOTHING_HEAVY = textwrap.dedent("""
    assert not [m for m in sys.modules if m.split(".")[0] in HEAVY], sorted(sys.modules)
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    return subprocess.run([sys.executable, "-c", BLOCKED + code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_the_block_works():
    r = run_blocked("import torch\n")
    assert r.returncode != 0 and "torch is blocked" in r.stderr


@pytest.mark.parametrize("check", ["load_config", "validate_stage_config"])
def test_config_schemas_load_without_torch(check):
    from umt import catalogue

    code = LOAD_CONFIGS + (VALIDATE if check == "validate_stage_config" else "") + NOTHING_HEAVY
    r = run_blocked(code)
    assert r.returncode == 0, r.stderr[-3000:]
    word = "validated" if check == "validate_stage_config" else "loaded"
    assert r.stdout.split().count(word) == len(catalogue.STAGES), r.stdout
