"""The stage catalogue (umt/catalogue.py) is the one list of stages: its entries are consistent,
every consumer derives from it, and a new task is one entry (plus its own modules)."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from umt import catalogue
from umt.configs.finetune_action import FinetuneActionConfig
from umt.pipeline import plan as planning

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_is_consistent_and_every_entry_exists():
    catalogue.check()
    for stage in catalogue.STAGES.values():
        assert importlib.util.find_spec(stage.module) is not None, stage.module
        schema = stage.config_schema()
        assert dataclasses.is_dataclass(schema), stage.name
        for size in planning.MODEL_SIZES:
            planning.preset(stage.name, size)  # raises naming the missing preset
    assert catalogue.tasks() == ["action", "retrieval", "qa", "ava", "mc"]
    assert catalogue.finetune_of("mc") is None
    assert catalogue.evaluation_of("mc").parent == "finetune-retrieval"
    with pytest.raises(ValueError, match="unknown stage 'stage3'; known stages: eval-action"):
        catalogue.get("stage3")


def test_chance_level_comes_from_the_evaluations_own_counts():
    action = catalogue.get("eval-action")
    assert catalogue.chance_level(action, {"top1": 30.0, "num_classes": 4}) == 25.0
    assert catalogue.chance_level(action, {"top1": 30.0}) is None
    assert catalogue.chance_level(catalogue.get("stage1"), {"num_classes": 4}) is None


def test_a_broken_entry_is_refused(monkeypatch):
    bad = dataclasses.replace(catalogue.get("eval-mc"), parent="finetune-mc")
    monkeypatch.setitem(catalogue.STAGES, "eval-mc", bad)
    with pytest.raises(ValueError, match="eval-mc: parent 'finetune-mc' is not a stage"):
        catalogue.check()


def test_the_cli_has_one_command_per_entry():
    out = subprocess.run([sys.executable, "-m", "umt.cli", "train", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120).stdout
    out += subprocess.run([sys.executable, "-m", "umt.cli", "eval", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120).stdout
    for stage in catalogue.STAGES.values():
        assert stage.command in out, stage.name


# -- a new task is one entry -----------------------------------------------------------------
@dataclasses.dataclass
class ToyConfig(FinetuneActionConfig):
    PRESETS = ("finetune-action", None)  # the action presets stand in for the toy's own


def _with_toy_task(monkeypatch) -> None:
    """A task 'toy' declared only in the catalogue (it borrows the action modules)."""
    tune = dataclasses.replace(catalogue.get("finetune-action"), name="finetune-toy",
                               task="toy", title="Fine-tune: toy",
                               schema=f"{__name__}:ToyConfig")
    score = dataclasses.replace(catalogue.get("eval-action"), name="eval-toy", task="toy",
                                parent="finetune-toy", title="Evaluate: toy")
    monkeypatch.setitem(catalogue.STAGES, tune.name, tune)
    monkeypatch.setitem(catalogue.STAGES, score.name, score)


def test_a_new_task_is_planned_validated_and_compiled_from_its_entry(monkeypatch, tmp_path):
    from umt.pipeline.validate import Settings, validate

    _with_toy_task(monkeypatch)
    catalogue.check()
    s = Settings(output_prefix=str(tmp_path), existing_dataset="", input_videos=str(tmp_path),
                 model_size="tiny", nodes=1, gpus_per_node=0, downstream_nodes=1,
                 node_pool="cpu", run_stage2=False, tasks=["toy"])
    result = validate(s)
    assert set(result["steps"]) == {"stage1", "finetune-toy", "eval-toy"}
    assert result["steps"]["eval-toy"]["parent"] == result["steps"]["finetune-toy"]["output_dir"]
    assert result["skipped"]["finetune-action"] == "task action is not in tasks"

    # The pipeline grows one fine-tune and one evaluation task, wired to the parents.
    from kfp import compiler

    from umt.pipeline.loader import load_pipeline

    out = tmp_path / "full.yaml"
    compiler.Compiler().compile(load_pipeline(str(ROOT / "pipelines" / "full.py")), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    body = next(c for c in spec["components"].values() if "dag" in c)["dag"]["tasks"]
    tasks = {t["inputs"]["parameters"]["task"]["runtimeValue"]["constant"]: key
             for key, t in body.items() if key.startswith("finetune")}
    assert "toy" in tasks
    toy_eval = next(t for key, t in body.items() if key.startswith("evaluate")
                    and t["inputs"]["parameters"]["task"]["runtimeValue"]["constant"] == "toy")
    assert toy_eval["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == \
        tasks["toy"]
    assert spec["root"]["inputDefinitions"]["parameters"]["tasks"]["defaultValue"][-1] == "toy"

    # The shipped kubectl manifest of the new stage renders from the same entry.
    from umt.launch.manifests import render_stage

    assert "umt.train.finetune_action" in render_stage("finetune-toy")
