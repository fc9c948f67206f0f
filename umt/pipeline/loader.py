"""Load a pipeline from its ``.py`` file, compile it, and read and parse its parameters.

``umt run`` and ``umt submit`` both work on the *compiled* pipeline spec, so what runs here and
what a cluster gets are the same YAML. Uses kfp (imported inside the functions).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml


class PipelineError(ValueError):
    """A pipeline file, function or argument that cannot be used; the message says why."""


def load_pipeline(path: str, function: str | None = None) -> Any:
    """The ``@dsl.pipeline`` object defined in ``path`` (``function`` picks one of several)."""
    from kfp.dsl.graph_component import GraphComponent

    file = Path(path)
    if not file.is_file() or file.suffix != ".py":
        raise PipelineError(f"{path}: not a Python file with a @dsl.pipeline (e.g. "
                            "pipelines/full.py)")
    name = "umt_pipeline_" + re.sub(r"\W", "_", file.stem)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    # Only pipelines defined in this file, not ones it imported.
    found = {k: v for k, v in vars(module).items() if isinstance(v, GraphComponent)
             and getattr(v.pipeline_func, "__module__", None) == name}
    if function:
        if function not in found:
            raise PipelineError(f"{path} has no pipeline {function!r} (it has: "
                                f"{', '.join(found) or 'none'})")
        return found[function]
    if len(found) != 1:
        raise PipelineError(f"{path} defines {len(found)} pipelines ({', '.join(found) or '-'}); "
                            "choose one with --function")
    return next(iter(found.values()))


def compile_pipeline(pipeline: Any, output: str | Path) -> Path:
    from kfp import compiler

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    return output


def read_spec(path: str | Path) -> dict[str, Any]:
    """The pipeline spec of a compiled package (its first YAML document)."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    return docs[0]


def parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> {type, default, description} of the pipeline's input parameters."""
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: {"type": p.get("parameterType", "STRING"), "default": p.get("defaultValue"),
                   "description": p.get("description", "")} for name, p in params.items()}


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_value(name: str, text: str, kind: str) -> Any:
    """A ``key=value`` value as the parameter's type; PipelineError naming key, value, type."""
    try:
        if kind == "STRING":
            return text
        if kind == "NUMBER_INTEGER":
            return int(text)
        if kind == "NUMBER_DOUBLE":
            return float(text)
        if kind == "BOOLEAN":
            low = text.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError
        if kind in ("LIST", "STRUCT"):
            value = json.loads(text)
            if not isinstance(value, list if kind == "LIST" else dict):
                raise ValueError
            return value
    except ValueError:
        pass
    expected = {"NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
                "BOOLEAN": "true or false", "LIST": 'a JSON list, e.g. ["a=1","b=2"]',
                "STRUCT": "a JSON object"}.get(kind, kind)
    raise PipelineError(f"{name}={text!r}: must be {expected}")


def parse_arguments(items: Sequence[str], params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``["nodes=2", "run_qa=false"]`` -> typed arguments; unknown names are an error."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PipelineError(f"{item!r}: pipeline arguments look like name=value")
        if key not in params:
            raise PipelineError(f"unknown pipeline parameter {key!r}; the pipeline has: "
                                f"{', '.join(sorted(params))}")
        out[key] = parse_value(key, text, params[key]["type"])
    return out


def task_names(spec: dict[str, Any]) -> dict[str, str]:
    """task key (as kfp.local names it) -> display name, for every task in every DAG, in the
    order they can run (by depth in the DAG, then name); exit handlers last."""
    found: list[tuple[int, str, str]] = []

    def walk(dag: dict[str, Any], offset: int) -> None:
        tasks = dag.get("tasks") or {}
        depth: dict[str, int] = {}

        def depth_of(key: str, seen: tuple = ()) -> int:
            if key not in depth:
                deps = [d for d in tasks[key].get("dependentTasks", []) if d in tasks
                        and d not in seen]
                depth[key] = 1 + max((depth_of(d, seen + (key,)) for d in deps), default=-1)
            return depth[key]

        for key, task in tasks.items():
            level = offset + depth_of(key)
            if task.get("triggerPolicy", {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED":
                level += 1000  # exit handler: after everything
            component = spec.get("components", {}).get(task.get("componentRef", {}).get("name"),
                                                        {})
            if "dag" in component:
                walk(component["dag"], level)
            else:
                found.append((level, key, task.get("taskInfo", {}).get("name", key)))

    walk(spec.get("root", {}).get("dag", {}), 0)
    return {key: name for _, key, name in sorted(found)}
