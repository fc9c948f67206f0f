"""Load a stage config: dataclass defaults <- preset or YAML file <- ``key=value`` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

T = TypeVar("T")


def preset_path(stage: str, name: str) -> Path:
    """Path of the packaged preset ``<stage>_<name>.yaml`` (e.g. stage1, tiny)."""
    return Path(str(resources.files("umt.configs").joinpath(f"{stage}_{name}.yaml")))


def list_presets(stage: str) -> list[str]:
    folder = Path(str(resources.files("umt.configs")))
    prefix = f"{stage}_"
    return sorted(p.stem[len(prefix):] for p in folder.glob(f"{prefix}*.yaml"))


def load_config(schema: type[T], stage: str, config: str | None = None,
                overrides: Sequence[str] = ()) -> T:
    """Build a typed config.

    ``config`` is a preset name (``tiny``, ``b16``...) or a YAML file path. Overrides are
    OmegaConf dot-list items (``train.steps=10 optim.betas=[0.9,0.99]``). Unknown keys and
    wrongly-typed values raise ``ValueError`` naming the offending key.
    """
    base = OmegaConf.structured(schema)
    try:
        if config:
            path = Path(config)
            if not (path.suffix in (".yaml", ".yml") and path.exists()):
                path = preset_path(stage, config)
                if not path.exists():
                    raise ValueError(
                        f"config {config!r} is neither a YAML file nor a {stage} preset "
                        f"(presets: {', '.join(list_presets(stage))})")
            base = OmegaConf.merge(base, OmegaConf.load(path))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like key=value, got: {bad}")
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(base)  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        raise ValueError(f"{stage} config: {e.full_key} is required (set it in the YAML or pass "
                         f"{e.full_key}=...)") from None
    except OmegaConfBaseException as e:
        raise ValueError(f"invalid {stage} config: {e}") from None


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


