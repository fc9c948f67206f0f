"""Compile contracts of pipelines/*.py: DAG edges, artifact types, parameters, CPU-only launcher
pods (also when built from the component.yaml files), secrets only from a Secret, no run id as a
cached input, caching off on the exit handler, retries on launchers."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from kfp import compiler, dsl  # noqa: E402
from kfp import components as kfp_components  # noqa: E402

from umt.pipeline.loader import load_pipeline, parameters, task_names  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("full", "pretrain", "finetune")
LAUNCHERS = {"pretrain-stage1", "pretrain-stage2", "finetune", "finetune-2", "finetune-3",
             "evaluate", "evaluate-2", "evaluate-3", "evaluate-4"}
RUN_ID_PLACEHOLDERS = ("{{$.pipeline_job_uuid}}", "{{$.pipeline_job_name}}",
                       "{{$.pipeline_job_resource_name}}", "{{$.pipeline_task_uuid}}")


# Credentials present at compile time must never land in the YAML: every pipeline is compiled
# once, with these in the environment, and every test reads that compiled spec.
SENTINELS = {"AWS_ACCESS_KEY_ID": "AKIASENTINEL0000",
             "AWS_SECRET_ACCESS_KEY": "sentinel-secret-value-123"}
_COMPILED: dict[str, tuple[dict, dict, str]] = {}


def compiled(name: str, tmp: Path) -> tuple[dict, dict, str]:
    if name not in _COMPILED:
        out = tmp / f"{name}.yaml"
        saved = {k: os.environ.get(k) for k in SENTINELS}
        os.environ.update(SENTINELS)
        try:
            compiler.Compiler().compile(load_pipeline(str(ROOT / "pipelines" / f"{name}.py")),
                                        str(out))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        text = out.read_text()
        docs = list(yaml.safe_load_all(text))
        _COMPILED[name] = (docs[0], (docs[1] if len(docs) > 1 else {}), text)
    return _COMPILED[name]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return compiled("full", tmp_path_factory.mktemp("full"))


def all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of every DAG by name (the exit handler's body is a nested DAG)."""
    out = {}

    def walk(dag):
        for key, task in (dag.get("tasks") or {}).items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])
            else:
                out[key] = task

    walk(spec["root"]["dag"])
    return out


def executor_of(spec: dict, task: dict) -> dict:
    comp = spec["components"][task["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][comp["executorLabel"]]


def test_kfp_cli_compiles_every_pipeline_from_anywhere_without_pythonpath(tmp_path):
    """The documented command, run outside the checkout and without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    kfp_cli = Path(sys.executable).parent / "kfp"
    for name in PIPELINES:
        out = tmp_path / f"{name}.yaml"
        subprocess.run([str(kfp_cli), "dsl", "compile", "--py",
                        str(ROOT / "pipelines" / f"{name}.py"), "--output", str(out)],
                       cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
        assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"].startswith("umt-")
    # and relative to the checkout, as the README writes it
    subprocess.run([str(kfp_cli), "dsl", "compile", "--py", "pipelines/full.py", "--output",
                    str(tmp_path / "rel.yaml")], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)


def test_full_dag_edges(full):
    spec, _, _ = full
    tasks = all_tasks(spec)
    deps = {k: set(t.get("dependentTasks", [])) for k, t in tasks.items()}
    assert deps["plan-shards"] == set() and deps["validate"] == {"plan-shards"}
    assert deps["shard-videos"] == set()  # inside the loop, which runs after validate
    assert deps["merge-shards"] == {"for-loop-2", "plan-shards"}
    assert deps["pretrain-stage1"] == {"merge-shards"}
    assert deps["pretrain-stage2"] == {"merge-shards", "pretrain-stage1"}
    def task_of(key: str) -> str:
        return tasks[key]["inputs"]["parameters"]["task"]["runtimeValue"]["constant"]

    tuned = {task_of(k): k for k in tasks if k.startswith("finetune")}
    assert set(tuned) == {"action", "retrieval", "qa"}
    assert deps[tuned["action"]] == {"merge-shards", "pretrain-stage1"}
    assert deps[tuned["retrieval"]] == {"merge-shards", "pretrain-stage2"}
    assert deps[tuned["qa"]] == {"merge-shards", "pretrain-stage2"}
    evaluated = {task_of(k):
                 tasks[k]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"]
                 for k in tasks if k.startswith("evaluate")}
    assert evaluated == {"action": tuned["action"], "retrieval": tuned["retrieval"],
                         "qa": tuned["qa"], "mc": tuned["retrieval"]}
    # The report reads the plan (validate's) and runs after every step it reports on.
    assert tasks["report"]["inputs"]["artifacts"]["plan"]["taskOutputArtifact"] == {
        "producerTask": "validate", "outputArtifactKey": "plan"}
    assert deps["report"] == {"validate", "merge-shards", "pretrain-stage1", "pretrain-stage2",
                              *tuned.values(), *(k for k in tasks if k.startswith("evaluate"))}
    # The exit handler runs after the whole body, whatever happened.
    root = spec["root"]["dag"]["tasks"]
    assert root["cleanup"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["cleanup"]["dependentTasks"] == ["exit-handler-1"]
    assert "taskFinalStatus" in root["cleanup"]["inputs"]["parameters"]["status"]


def test_full_shards_in_a_parallel_for_then_merges(full):
    """plan-shards (never cached) -> ParallelFor over its parts (bounded parallelism) of
    shard-videos, each part cached and retried on its own -> merge-shards -> the one Dataset."""
    spec, _, _ = full
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    (loop_key,) = [k for k, t in body.items() if "parameterIterator" in t]
    loop = body[loop_key]
    assert loop_key == "for-loop-2" and set(loop["dependentTasks"]) == {"plan-shards", "validate"}
    assert loop["iteratorPolicy"] == {"parallelismLimit": 16}
    assert loop["inputs"]["parameters"]["pipelinechannel--plan-shards-Output"][
        "taskOutputParameter"] == {"producerTask": "plan-shards", "outputParameterKey": "Output"}
    (inner,) = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()
    assert inner["componentRef"]["name"] == "comp-shard-videos"
    args = inner["inputs"]["parameters"]
    for name, field in (("part", "part"), ("num_parts", "num_parts"),
                        ("input_fingerprint", "fingerprint")):
        assert args[name]["parameterExpressionSelector"] == f'parseJson(string_value)["{field}"]'
    assert inner["cachingOptions"] == {"enableCache": True}
    assert inner["retryPolicy"]["maxRetryCount"] == 2
    # The content fingerprint reaches every cache key that depends on the data.
    assert body["plan-shards"].get("cachingOptions", {}).get("enableCache") is not True
    for task in ("validate", "merge-shards"):
        assert body[task]["inputs"]["parameters"]["shard_plan"]["taskOutputParameter"] == {
            "producerTask": "plan-shards", "outputParameterKey": "Output"}
    params = parameters(spec)
    assert params["shard_parts"]["type"] == "NUMBER_INTEGER" and params["shard_parts"]["default"] == 1
    for key in ("pretrain-stage1", "pretrain-stage2", "report"):
        assert body[key]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"] == {
            "producerTask": "merge-shards", "outputArtifactKey": "dataset"}


def test_full_artifact_types(full):
    spec, _, _ = full
    comps = spec["components"]

    def outputs(comp):
        return {k: v["artifactType"]["schemaTitle"]
                for k, v in comps[comp]["outputDefinitions"]["artifacts"].items()}

    assert outputs("comp-shard-videos") == outputs("comp-merge-shards") == {
        "dataset": "system.Dataset"}
    for comp in ("comp-pretrain-stage1", "comp-pretrain-stage2", "comp-finetune"):
        assert outputs(comp) == {"model": "system.Model", "metrics": "system.Metrics",
                                 "job": "system.Artifact"}
    assert outputs("comp-evaluate") == {"metrics": "system.Metrics", "job": "system.Artifact",
                                        "confusion": "system.ClassificationMetrics"}
    assert outputs("comp-report") == {"markdown": "system.Markdown", "html": "system.HTML"}
    inputs = comps["comp-finetune"]["inputDefinitions"]["artifacts"]
    assert inputs["pretrained"]["artifactType"]["schemaTitle"] == "system.Model"
    assert inputs["dataset"]["artifactType"]["schemaTitle"] == "system.Dataset"


def test_parameters_have_descriptions_and_empty_strings_not_none(tmp_path):
    for name in PIPELINES:
        spec, _, _ = compiled(name, tmp_path)
        params = parameters(spec)
        for key, p in params.items():
            assert p["description"], f"{name}: parameter {key} has no description"
            if p["type"] == "STRING" and p["default"] is not None:
                assert isinstance(p["default"], str)
        assert spec["pipelineInfo"].get("displayName"), name
    spec, _, _ = compiled("full", tmp_path)
    params = parameters(spec)
    assert params["output_prefix"]["default"] == "s3://umt/runs"
    assert params["existing_dataset"]["default"] == ""
    assert params["existing_stage1_checkpoint"]["default"] == ""
    assert params["model_size"]["default"] == "base"
    assert params["node_pool"]["default"] == "gke-a100"
    assert params["nodes"]["default"] == 4 and params["gpus_per_node"]["default"] == 8
    assert params["stage1_overrides"]["type"] == "LIST"
    # The downstream tasks are the catalogue's: one list and one dict parameter for all.
    from umt import catalogue

    assert params["tasks"]["type"] == "LIST" and params["tasks"]["default"] == catalogue.tasks()
    assert params["task_data"]["type"] == "STRUCT" and params["task_data"]["default"] == {}
    assert not any(k.startswith("run_") and k != "run_stage2" for k in params)


def test_every_task_has_a_display_name(full):
    spec, _, _ = full
    names = task_names(spec)
    for key, name in names.items():
        assert name != key, f"task {key} has no display name"


def _assert_cpu_only(spec: dict, where: str) -> None:
    for key, task in all_tasks(spec).items():
        resources = executor_of(spec, task)["container"].get("resources", {})
        assert "accelerator" not in resources, f"{where}: task {key} asks for an accelerator"
        assert resources.get("resourceCpuRequest"), f"{where}: task {key} has no CPU request"
        assert resources.get("resourceMemoryRequest"), f"{where}: {key} has no memory request"
        cpu = resources["resourceCpuRequest"]
        assert (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)) <= 4


def test_no_gpu_on_any_launcher_pod(tmp_path):
    for name in PIPELINES:
        spec, platform, text = compiled(name, tmp_path)
        _assert_cpu_only(spec, name)
        assert "nvidia.com/gpu" not in text
        assert "taskConfigPassthroughs" not in text


def test_a_pipeline_built_from_the_component_yaml_files_keeps_launchers_cpu_only(tmp_path):
    """kfp 2.17's load_component_from_file drops TaskConfig passthroughs; we use none, and
    nodes/GPUs are plain parameters, so a reuser's pipeline stays CPU-only too."""
    load = {n: kfp_components.load_component_from_file(
        str(ROOT / "components" / n / "component.yaml"))
        for n in ("shard_videos", "pretrain_stage1", "evaluate")}

    @dsl.pipeline(name="reuse")
    def reuse(videos: str, prefix: str):
        data = load["shard_videos"](output_prefix=prefix, input_videos=videos)
        data.set_cpu_request("1").set_memory_request("2Gi")
        stage1 = load["pretrain_stage1"](dataset=data.outputs["dataset"], output_prefix=prefix,
                                         nodes=8, gpus_per_node=8)
        stage1.set_cpu_request("500m").set_memory_request("1Gi")
        scored = load["evaluate"](task="action", model=stage1.outputs["model"],
                                  dataset=data.outputs["dataset"], output_prefix=prefix)
        scored.set_cpu_request("500m").set_memory_request("1Gi")

    out = tmp_path / "reuse.yaml"
    compiler.Compiler().compile(reuse, str(out))
    spec = yaml.safe_load(out.read_text())
    _assert_cpu_only(spec, "reuse")
    args = all_tasks(spec)["pretrain-stage1"]["inputs"]["parameters"]
    assert args["gpus_per_node"]["runtimeValue"]["constant"] == 8  # a parameter, not a pod GPU


def test_credentials_only_from_the_secret(tmp_path):
    """No parameter carries a credential; every S3-touching task reads them from the Secret as
    environment; a credential present at compile time (SENTINELS) never lands in the YAML."""
    for name in PIPELINES:
        spec, platform, text = compiled(name, tmp_path)
        assert "AKIASENTINEL0000" not in text and "sentinel-secret-value-123" not in text
        for key in parameters(spec):
            assert not re.search(r"password|access_key|secret_key|token", key), key
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for key, task in all_tasks(spec).items():
            if key == "cleanup":
                continue  # talks to the Kubernetes API only, with the pod's ServiceAccount
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            (secret,) = executors[label]["secretAsEnv"]
            envs = {k["envVar"] for k in secret["keyToEnv"]}
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs, key
            assert secret["secretNameParameter"] == {
                "componentInputParameter": "pipelinechannel--s3_secret"}


def test_no_cached_task_takes_the_run_id_as_an_input(tmp_path):
    for name in PIPELINES:
        spec, platform, text = compiled(name, tmp_path)
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for key, task in all_tasks(spec).items():
            inputs = json.dumps(task.get("inputs", {}))
            if task.get("cachingOptions", {}).get("enableCache"):
                for placeholder in RUN_ID_PLACEHOLDERS:
                    assert placeholder not in inputs, f"{name}: cached {key} takes {placeholder}"
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            fields = executors[label].get("fieldPathAsEnv", [])
            assert {"name": "KFP_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"} \
                in fields, f"{name}: {key} does not read the run id from its pod"


def test_caching_on_everywhere_but_the_exit_task_and_retries_on_launchers(tmp_path):
    for name in PIPELINES:
        spec, _, _ = compiled(name, tmp_path)
        for key, task in all_tasks(spec).items():
            cached = task.get("cachingOptions", {}).get("enableCache", False)
            # plan-shards reads the manifest's content: a cached one would hide an edit.
            assert cached == (key not in ("cleanup", "plan-shards")), f"{name}: caching of {key}"
            if key in LAUNCHERS:
                assert task.get("retryPolicy", {}).get("maxRetryCount", 0) >= 1, key
