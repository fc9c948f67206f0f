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
    assert deps["credentials"] == set() and deps["validate"] == {"credentials"}
    # Every other task references the Secret credentials names (issue 16.2) and runs after
    # validate (the plan; the content fingerprints it takes as parameters, issue 16.5): the
    # merge through plan-shards, the shard parts inside the loop, which waits for both.
    assert all({"credentials", "validate"} <= d for k, d in deps.items()
               if k not in ("credentials", "validate", "cleanup", "shard-videos",
                            "merge-shards"))
    assert deps["merge-shards"] == {"credentials", "for-loop-2", "plan-shards"}
    deps = {k: d - {"credentials", "validate"} for k, d in deps.items()}
    assert deps["plan-shards"] == set()
    assert deps["shard-videos"] == set()  # inside the loop, which runs after validate
    assert deps["pretrain-stage1"] == {"merge-shards"}
    assert deps["pretrain-stage2"] == {"merge-shards", "pretrain-stage1"}
    def task_of(key: str) -> str:
        return tasks[key]["inputs"]["parameters"]["task"]["runtimeValue"]["constant"]

    tuned = {task_of(k): k for k in tasks if k.startswith("finetune")}
    assert set(tuned) == {"action", "retrieval", "qa", "ava"}
    assert deps[tuned["action"]] == {"merge-shards", "pretrain-stage1"}
    assert deps[tuned["ava"]] == {"merge-shards", "pretrain-stage1"}
    assert deps[tuned["retrieval"]] == {"merge-shards", "pretrain-stage2"}
    assert deps[tuned["qa"]] == {"merge-shards", "pretrain-stage2"}
    evaluated = {task_of(k):
                 tasks[k]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"]
                 for k in tasks if k.startswith("evaluate")}
    assert evaluated == {"action": tuned["action"], "retrieval": tuned["retrieval"],
                         "qa": tuned["qa"], "mc": tuned["retrieval"], "ava": tuned["ava"]}
    # The report reads the plan (validate's) and runs after every step it reports on.
    assert tasks["report"]["inputs"]["artifacts"]["plan"]["taskOutputArtifact"] == {
        "producerTask": "validate", "outputArtifactKey": "plan"}
    assert deps["report"] == {"merge-shards", "pretrain-stage1", "pretrain-stage2",
                              *tuned.values(), *(k for k in tasks if k.startswith("evaluate"))}
    # The exit handler runs after the whole body, whatever happened.
    root = spec["root"]["dag"]["tasks"]
    assert root["cleanup"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["cleanup"]["dependentTasks"] == ["exit-handler-1"]
    assert "taskFinalStatus" in root["cleanup"]["inputs"]["parameters"]["status"]


def test_full_shards_in_a_parallel_for_then_merges(full):
    """plan-shards -> ParallelFor over its parts (bounded parallelism) of
    shard-videos, each part cached and retried on its own -> merge-shards -> the one Dataset."""
    spec, _, _ = full
    body = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    (loop_key,) = [k for k, t in body.items() if "parameterIterator" in t]
    loop = body[loop_key]
    assert loop_key == "for-loop-2" and set(loop["dependentTasks"]) == {
        "credentials", "plan-shards", "validate"}
    assert loop["iteratorPolicy"] == {"parallelismLimit": 16}
    assert loop["inputs"]["parameters"]["pipelinechannel--plan-shards-Output"][
        "taskOutputParameter"] == {"producerTask": "plan-shards", "outputParameterKey": "Output"}
    (inner,) = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"].values()
    assert inner["componentRef"]["name"] == "comp-shard-videos"
    args = inner["inputs"]["parameters"]
    for name, field in (("part", "part"), ("num_parts", "num_parts"),
                        ("fingerprint", "fingerprint")):
        assert args[name]["parameterExpressionSelector"] == f'parseJson(string_value)["{field}"]'
    assert inner["cachingOptions"] == {"enableCache": True}
    assert inner["retryPolicy"]["maxRetryCount"] == 2
    # validate's content fingerprint reaches every cache key that depends on the data.
    assert body["plan-shards"]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"] == {
        "producerTask": "validate", "outputParameterKey": "data_fingerprint"}
    assert body["merge-shards"]["inputs"]["parameters"]["shard_plan"]["taskOutputParameter"] == {
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
    assert params["output_prefix"]["default"] == "s3://EDIT_ME_BUCKET/umt/runs"  # nobody's
    assert params["existing_dataset"]["default"] == ""
    assert params["existing_stage1_checkpoint"]["default"] == ""
    assert params["model_size"]["default"] == "base"
    assert params["node_pool"]["default"] == "gke-a100"
    assert params["nodes"]["default"] == 4 and params["gpus_per_node"]["default"] == 8
    assert params["stage1_overrides"]["type"] == "LIST"
    # The downstream tasks are the catalogue's: one list and one dict parameter for all.
    from umt import catalogue

    assert params["tasks"]["type"] == "LIST" and params["tasks"]["default"] == catalogue.default_tasks()
    assert "ava" in catalogue.tasks() and "ava" not in catalogue.default_tasks()
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
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            if key in ("cleanup", "credentials"):
                # cleanup talks to the Kubernetes API only, with the pod's ServiceAccount;
                # credentials only names the Secret.
                assert "secretAsEnv" not in executors[label], key
                continue
            (secret,) = executors[label]["secretAsEnv"]
            envs = {k["envVar"] for k in secret["keyToEnv"]}
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs, key
            assert secret["optional"] is True, key
            # Not the s3_secret parameter: "" (IRSA) would be secretKeyRef.name "" (issue 16.2).
            # A task inside a loop gets it as the loop's input.
            assert secret["secretNameParameter"] in (
                {"taskOutputParameter": {"producerTask": "credentials",
                                         "outputParameterKey": "Output"}},
                {"componentInputParameter": "pipelinechannel--credentials-Output"}), key
            assert "secretName" not in secret, key


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
            # validate fingerprints the inputs' content on every run (issue 16.5).
            assert cached == (key not in ("cleanup", "validate")), f"{name}: caching of {key}"
            if key in LAUNCHERS:
                assert task.get("retryPolicy", {}).get("maxRetryCount", 0) >= 1, key


def test_retried_tasks_outlive_their_jobs_and_launchers_are_not_evicted(tmp_path):
    """Issue 16: kfp's default backoffMaxDuration (3600s) would stop retries after an hour and
    kill a retried attempt at first start + 1 h; the backend compiler reads exactly these four
    retryPolicy fields of the IR (backend/src/v2/compiler/argocompiler/container.go) and a
    missing backoffMaxDuration becomes "0" there (no retry at all), so it is set, and long.
    Launcher pods carry the autoscaler's not-safe-to-evict annotation and, like the exit task,
    the Workflow's name (they read the run's state on SIGTERM)."""
    from components.tasks import SAFE_TO_EVICT
    from umt.launch.request import DEFAULT_ACTIVE_DEADLINE

    for name in PIPELINES:
        spec, platform, text = compiled(name, tmp_path)
        assert "backoffMaxDuration: 3600s" not in text
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        retried = set()
        for key, task in all_tasks(spec).items():
            policy = task.get("retryPolicy")
            label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
            config = executors[label]
            if policy:
                retried.add(key)
                assert set(policy) == {"maxRetryCount", "backoffDuration", "backoffFactor",
                                       "backoffMaxDuration"}, key
                window = int(policy["backoffMaxDuration"].rstrip("s"))
                assert window >= 2 * DEFAULT_ACTIVE_DEADLINE, f"{name}: {key} retries for {window}s"
            annotations = config.get("podMetadata", {}).get("annotations", {})
            if key in LAUNCHERS:
                assert annotations.get(SAFE_TO_EVICT) == "false", f"{name}: {key}"
            if key in LAUNCHERS or key == "cleanup":
                assert {"name": "UMT_WORKFLOW_NAME",
                        "fieldPath": "metadata.labels['workflows.argoproj.io/workflow']"} in \
                    config["fieldPathAsEnv"], f"{name}: {key}"
        assert retried & LAUNCHERS, name


def test_compiling_for_a_registry_pins_every_image_there(tmp_path):
    """Issue 16.4, the documented command: UMT_IMAGE_REPOSITORY=registry.example.com/ml kfp dsl
    compile names no other registry, every umt image by its immutable <version>-<sha> tag (the
    launcher's and, in every task's environment, the training image its jobs get), and
    UMT_IMAGE_PULL_SECRETS becomes imagePullSecrets."""
    from umt.launch.images import package_version, source_revision

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "UMT_IMAGE_TAG", "UMT_TRAIN_IMAGE", "UMT_LAUNCHER_IMAGE")}
    env.update(UMT_IMAGE_REPOSITORY="registry.example.com/ml", UMT_IMAGE_PULL_SECRETS="regcred")
    out = tmp_path / "full.yaml"
    subprocess.run([str(Path(sys.executable).parent / "kfp"), "dsl", "compile", "--py",
                    "pipelines/full.py", "--output", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=180)
    text = out.read_text()
    assert "ghcr.io" not in text and "docker.io" not in text
    spec, platform = list(yaml.safe_load_all(text))[:2]
    tag = f"{package_version()}-{source_revision()}"  # what images/build.sh tags this tree
    assert re.fullmatch(r"\d+\.\d+\.\d+.*-[0-9a-f]{12}(-dirty)?", tag)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"registry.example.com/ml/umt-launcher:{tag}"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for key, task in all_tasks(spec).items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        env_vars = {e["name"]: e["value"] for e in
                    spec["deploymentSpec"]["executors"][label]["container"].get("env", [])}
        assert env_vars["UMT_TRAIN_IMAGE"] == f"registry.example.com/ml/umt-train:{tag}", key
        assert env_vars["UMT_IMAGE_PULL_SECRETS"] == "regcred", key
        assert executors[label]["imagePullSecret"] == [
            {"secretName": "regcred", "secretNameParameter": {"runtimeValue": {
                "constant": "regcred"}}}], key


def test_tasks_reading_given_inputs_take_their_content_fingerprints(tmp_path):
    """Issue 16.5: the cache key of a task is its parameters (and input artifact names), so
    the content fingerprints validate computes are parameters of the tasks that read the
    inputs: a file edited in place changes their keys (and, in steps, their folders)."""
    want = {"shard-videos": ("fingerprint", "data_fingerprint"),
            "plan-shards": ("fingerprint", "data_fingerprint"),
            "pretrain-stage1": ("checkpoint_fingerprints", "checkpoint_fingerprints"),
            "pretrain-stage2": ("checkpoint_fingerprints", "checkpoint_fingerprints"),
            "finetune": ("task_data_fingerprints", "task_data_fingerprints"),
            "evaluate": ("task_data_fingerprints", "task_data_fingerprints")}
    for name in PIPELINES:
        spec, _, _ = compiled(name, tmp_path)
        for key, task in all_tasks(spec).items():
            kind = re.sub(r"-\d+$", "", key)
            if kind not in want:
                continue
            param, output = want[kind]
            if "parameterExpressionSelector" in task["inputs"]["parameters"][param]:
                continue  # a shard part: the fingerprint is its loop item's (plan-shards')
            assert task["inputs"]["parameters"][param] == {"taskOutputParameter": {
                "producerTask": "validate", "outputParameterKey": output}}, f"{name}: {key}"


def test_platform_settings_are_parameters_that_reach_every_launcher(tmp_path):
    """Issue 16.7: the Kueue queue, the pods' priority class and the jobs' namespace are
    pipeline parameters of every pipeline, passed to validate and every launcher (and the
    namespace to the exit task, which cleans up there)."""
    settings = ("kueue_queue", "priority_class", "job_namespace")
    for name in PIPELINES:
        spec, _, _ = compiled(name, tmp_path)
        params = parameters(spec)
        for key in settings:
            assert params[key]["type"] == "STRING" and params[key]["default"] == "", key
        for key, task in all_tasks(spec).items():
            if key in LAUNCHERS or key == "validate":
                args = task["inputs"]["parameters"]
                for setting in settings:
                    assert args[setting] == {
                        "componentInputParameter": f"pipelinechannel--{setting}"}, (key, setting)
        cleanup = spec["root"]["dag"]["tasks"]["cleanup"]["inputs"]["parameters"]
        assert cleanup["job_namespace"] == {"componentInputParameter": "job_namespace"}


def test_the_local_copy_keeps_the_cache_across_commits(tmp_path):
    """kfp.local's cache keys hash the image: the local copy of the package names the release
    tag (tasks are local processes), retries after 1 s and runs loops one iteration at a time;
    nothing else differs."""
    from umt.launch.images import LAUNCHER_IMAGE, release_image
    from umt.pipeline.local import local_package

    package = tmp_path / "full.yaml"
    package.write_text(compiled("full", tmp_path)[2])
    local = list(yaml.safe_load_all(local_package(package).read_text()))
    original = list(yaml.safe_load_all(package.read_text()))
    images = {e["container"]["image"] for e in local[0]["deploymentSpec"]["executors"].values()}
    assert images == {release_image(LAUNCHER_IMAGE)}
    for doc in (local[0], original[0]):
        for e in doc["deploymentSpec"]["executors"].values():
            e["container"]["image"] = "x"
        for comp in [doc["root"], *doc["components"].values()]:
            for task in (comp.get("dag", {}).get("tasks") or {}).values():
                task.get("retryPolicy", {}).pop("backoffDuration", None)
                if "iteratorPolicy" in task:
                    assert task.pop("iteratorPolicy")["parallelismLimit"] == (
                        1 if doc is local[0] else 16)
    assert local == original
