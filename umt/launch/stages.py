"""Stages the launcher can run, and checking their configs before a job is rendered.

Every entry of the stage catalogue (``umt.catalogue``: module, config schema) is a job; the
launcher needs no code per stage. A config is a preset name (packaged inside the image) or a YAML
file. A file on *this* machine does not exist inside the container, so its content is turned into
``key=value`` overrides on top of the schema defaults, which is exactly what loading the file
does; the rendered job then says every value it runs with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from umt import catalogue


def stage_module(stage: str) -> str:
    return catalogue.get(stage).module


def is_local_config_file(config: str | None) -> bool:
    return bool(config) and Path(config).suffix in (".yaml", ".yml") and Path(config).is_file()


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./:@+-]*$")


def _override_value(value: Any) -> str:
    """A value as OmegaConf's dot-list parser reads it back unchanged."""
    if isinstance(value, str):
        # Plain only when nothing could read it as another type ('null', 'yes', '1e-4');
        # everything else is a quoted (JSON = YAML) string.
        plain = _PLAIN.match(value) and yaml.safe_load(value) == value
        return value if plain else json.dumps(value)
    return json.dumps(value)


def flatten_config(data: dict[str, Any], prefix: str = "") -> list[str]:
    """``{'train': {'steps': 5}}`` -> ``['train.steps=5']`` (empty dicts stay ``{}``)."""
    out: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += flatten_config(value, dotted + ".")
        else:
            out.append(f"{dotted}={_override_value(value)}")
    return out


def job_config_args(config: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """(``--config`` value for the container, overrides) with local files inlined."""
    if is_local_config_file(config):
        from umt.configs.loader import read_config_file

        read_config_file(config)  # refuses tags, alias bombs, resolvers, non-mappings clearly
        # Flattened from PyYAML's reading (what the container's override parser expects).
        data = yaml.safe_load(Path(config).read_text()) or {}  # type: ignore[arg-type]
        return None, flatten_config(data) + list(overrides)
    return config, list(overrides)


def validate_stage_config(stage: str, config: str | None, overrides: Sequence[str]) -> Any:
    """Load the config exactly as the stage will, so a typo fails now, not on a GPU node."""
    from umt.configs import load_config

    return load_config(catalogue.get(stage).config_schema(), stage, config, list(overrides))
