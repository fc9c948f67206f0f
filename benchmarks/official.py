"""Import the official Unmasked Teacher code (OpenGVLab/unmasked_teacher) at run time.

Nothing of it is part of this repository: the benchmarks take ``--official <checkout>`` (a
clone, or ``git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo archive HEAD | tar -x
-C <dir>``) and import its modules from there without running its package ``__init__`` files
(which would import every model file), as ``tests/reference/make_reference.py`` does.

The official files were written for torch 1.12 / timm 0.4.12. Where one of their imports no
longer exists (``torch._six``; timm 1.x optimizers they import but the Stage-1 recipe never
uses; ``tensorboardX``/``einops`` imported but unused by the training step) a stub module is
registered in ``sys.modules`` for the names they import; every stub raises if it is *called*,
so a stub can never silently take part in a measurement. The list of stubs is returned and
recorded in each benchmark's JSON. The official files are never modified.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

PKG = "_umt_official_models"
MM_PKG = "_umt_official_mm"

# module -> names the official files import from it (only installed when the module is missing)
STUBS = {
    "torch._six": {"inf": math.inf},
    "tensorboardX": {"SummaryWriter": None},
    "einops": {"rearrange": None, "repeat": None},
    "timm.optim.novograd": {"NovoGrad": None},
    "timm.optim.nvnovograd": {"NvNovoGrad": None},
    "timm.optim.nadam": {"Nadam": None},
    "timm.optim.adafactor": {"Adafactor": None},
    "timm.optim.adahessian": {"Adahessian": None},
    "timm.optim.adamp": {"AdamP": None},
    "timm.optim.lookahead": {"Lookahead": None},
    "timm.optim.radam": {"RAdam": None},
    "timm.optim.rmsprop_tf": {"RMSpropTF": None},
    "timm.optim.sgdp": {"SGDP": None},
}


def _unavailable(name: str):
    def fn(*_a, **_k):
        raise RuntimeError(f"{name} is a stub (not installed here); the benchmark should not call it")
    return fn


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def install_stubs(names: dict[str, dict[str, Any]] = STUBS) -> list[str]:
    """Register stub modules for the missing ones among ``names`` (and stub names missing from
    a module that exists); returns what was stubbed."""
    done = []
    for name, attrs in names.items():
        if name in sys.modules or not _missing(name):
            mod = importlib.import_module(name)
            for k, v in attrs.items():
                if not hasattr(mod, k):
                    setattr(mod, k, v if v is not None else _unavailable(f"{name}.{k}"))
                    done.append(f"{name}.{k}")
            continue
        mod = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(mod, k, v if v is not None else _unavailable(f"{name}.{k}"))
        sys.modules[name] = mod
        done.append(name)
    return done


def _find(root: str, rel: str) -> Path:
    for cand in (Path(root), Path(root).parent, Path(root).parent.parent):
        if (cand / rel).exists():
            return cand
    raise SystemExit(f"--official {root!r}: {rel} not found there (pass the checkout's root)")


def _load_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def sha256s(files: list[Path]) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def load_single_modality(root: str) -> types.SimpleNamespace:
    """The official Stage-1 pieces: ``pt`` (modeling_pretrain_umt), ``clip`` (the teacher),
    ``engine`` (engines/engine_for_pretraining_umt: ``train_one_epoch``), ``utils``
    (``NativeScalerWithGradNormCount``, ``cosine_scheduler``) and ``optim_factory``
    (``create_optimizer``)."""
    base = _find(root, "single_modality/models/modeling_pretrain_umt.py") / "single_modality"
    stubs = install_stubs()
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [str(base / "models")]
    sys.modules[PKG] = pkg
    pt = importlib.import_module(f"{PKG}.modeling_pretrain_umt")
    clip = importlib.import_module(f"{PKG}.clip")
    # The engine does ``import utils``: the official utils is registered under that name
    # only while the engine and the optimizer factory are imported.
    saved = sys.modules.get("utils")
    utils = _load_file("utils", base / "utils.py")
    try:
        engine = _load_file("_umt_official_engine", base / "engines" / "engine_for_pretraining_umt.py")
        optim_factory = _load_file("_umt_official_optim_factory", base / "optim_factory.py")
    finally:
        if saved is not None:
            sys.modules["utils"] = saved
        else:
            sys.modules.pop("utils", None)
    files = [base / "models" / "modeling_pretrain_umt.py", base / "models" / "modeling_finetune.py",
             base / "models" / "clip.py", base / "engines" / "engine_for_pretraining_umt.py",
             base / "utils.py", base / "optim_factory.py"]
    return types.SimpleNamespace(pt=pt, clip=clip, engine=engine, utils=utils,
                                 optim_factory=optim_factory, stubs=stubs, root=str(base.parent),
                                 sha256=sha256s(files), commit=_commit(base.parent))


def _commit(root: Path) -> str | None:
    """The checkout's commit when it is a git clone (an archive extraction has none)."""
    head = root / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (root / ".git" / ref[5:]).read_text().strip()
        return ref
    except OSError:
        return os.environ.get("UMT_OFFICIAL_COMMIT")
