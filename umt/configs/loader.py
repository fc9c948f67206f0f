"""Load a stage config: dataclass defaults <- preset or YAML file <- ``key=value`` overrides."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")

# A config file or override is data: it may refer to other keys (``${train.output_dir}``) but
# may not call resolvers. ``${oc.env:AWS_SECRET_ACCESS_KEY}`` would copy a pod's S3 secret into
# config.yaml, the checkpoint and the job's logs; other resolvers can do worse.
_RESOLVER_CALL = re.compile(r"\$\{\s*[\w.\-]+\s*:")
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; refuse anything absurd before parsing


def preset_path(stage: str, name: str) -> Path:
    """Path of the packaged preset ``<stage>_<name>.yaml`` (e.g. stage1, tiny)."""
    return Path(str(resources.files("umt.configs").joinpath(f"{stage}_{name}.yaml")))


def list_presets(stage: str) -> list[str]:
    folder = Path(str(resources.files("umt.configs")))
    prefix = f"{stage}_"
    return sorted(p.stem[len(prefix):] for p in folder.glob(f"{prefix}*.yaml"))


def _refuse_resolvers(node: Any, where: str, path: str = "") -> None:
    """Raise if any string value of ``node`` (a raw DictConfig/ListConfig) calls a resolver."""
    if isinstance(node, DictConfig):
        items = ((f"{path}.{k}" if path else str(k), node._get_node(k)) for k in node.keys())
    elif isinstance(node, ListConfig):
        items = ((f"{path}[{i}]", node._get_node(i)) for i in range(len(node)))
    else:
        value = node._value() if hasattr(node, "_value") else node
        if isinstance(value, str) and _RESOLVER_CALL.search(value):
            raise ValueError(f"{where}: {path}={value!r} calls a resolver; resolvers such as "
                             f"oc.env are disabled in umt configs (only ${{other.key}} "
                             f"references are allowed)")
        return
    for sub_path, child in items:
        _refuse_resolvers(child, where, sub_path)


def read_config_file(path: str | Path) -> DictConfig:
    """A config file as a raw DictConfig, refused with one clear ``ValueError`` naming the file
    when it is too large, not YAML, not a mapping, uses tags (``!!python/object/apply:...``:
    OmegaConf's loader is a safe one, nothing is ever constructed or run), expands aliases into
    more than OmegaConf's limit of nodes (a "billion laughs" bomb) or calls resolvers.

    ``umt job render`` / ``submit`` read config files through this too, before they flatten them.
    """
    path = Path(path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split()).split(". See ")[0]
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"config file {path} is not a umt config: {problem[:200]}{where}") from None
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"config file {path} must hold a mapping of sections (train:, model:, "
                         f"...), not a {type(loaded).__name__}")
    _refuse_resolvers(loaded, str(path))
    return loaded


def preset_source(schema: type, stage: str) -> tuple[str, Sequence[str] | None]:
    """Whose presets a stage uses: its own, or -- when the schema says ``PRESETS = (stage,
    sections)`` -- the listed sections of another stage's (an evaluation takes the ``model``
    section of the training stage whose checkpoints it reads, so sizes are written once)."""
    presets = getattr(schema, "PRESETS", None)
    return (presets[0], presets[1]) if presets else (stage, None)


def _merged(schema: type, stage: str, config: str | None, overrides: Sequence[str]) -> DictConfig:
    base = OmegaConf.structured(schema)
    if config:
        path = Path(config)
        sections = None
        if not (path.suffix in (".yaml", ".yml") and path.exists()):
            owner, sections = preset_source(schema, stage)
            path = preset_path(owner, config)
            if not path.exists():
                raise ValueError(
                    f"config {config!r} is neither a YAML file nor a {owner} preset "
                    f"(presets: {', '.join(list_presets(owner))})")
        loaded = read_config_file(path)
        if sections is not None:
            loaded = OmegaConf.create({k: loaded[k] for k in sections if k in loaded})
        base = OmegaConf.merge(base, loaded)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"overrides must look like key=value, got: {bad}")
    if overrides:
        dotlist = OmegaConf.from_dotlist(list(overrides))
        _refuse_resolvers(dotlist, "override")
        base = OmegaConf.merge(base, dotlist)
    return base


def _check_loaded(cfg: Any) -> None:
    """Checks of a whole config that no section's ``__post_init__`` can make (a section is
    also built from its defaults alone): a training stage says how long to train."""
    from umt.configs.schedule import check_length

    train = getattr(cfg, "train", None)
    if train is not None and hasattr(train, "epochs"):
        check_length(train)


def load_config(schema: type[T], stage: str, config: str | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Build a typed config.

    ``config`` is a preset name (``tiny``, ``b16``...) or a YAML file path. Overrides are
    OmegaConf dot-list items (``train.steps=10 optim.betas=[0.9,0.99]``). Unknown keys,
    wrongly-typed values and out-of-range values (checked by each dataclass's
    ``__post_init__``) raise ``ValueError`` naming the offending key.
    """
    try:
        cfg = OmegaConf.to_object(_merged(schema, stage, config, overrides))
        _check_loaded(cfg)
        return cfg  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        raise ValueError(f"{stage} config: {e.full_key} is required (set it in the YAML or pass "
                         f"{e.full_key}=...)") from None
    except OmegaConfBaseException as e:
        raise ValueError(f"invalid {stage} config: {e}") from None
    except ValueError as e:  # a range or choice check of a dataclass
        raise ValueError(f"invalid {stage} config: {e}") from None


def show_config(schema: type, stage: str, config: str | None = None,
                overrides: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The resolved config as YAML, and the required keys still missing (shown as ``???``).

    Unlike :func:`load_config` a missing required value is not an error here: ``umt config
    show`` is how users find out what they still have to set. Range checks still apply.
    """
    try:
        merged = _merged(schema, stage, config, overrides)
        missing = sorted(OmegaConf.missing_keys(merged))
        if not missing:
            _check_loaded(OmegaConf.to_object(merged))  # runs the range and choice checks
        return OmegaConf.to_yaml(merged), missing
    except OmegaConfBaseException as e:
        raise ValueError(f"invalid {stage} config: {e}") from None
    except ValueError as e:
        raise ValueError(f"invalid {stage} config: {e}") from None


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
