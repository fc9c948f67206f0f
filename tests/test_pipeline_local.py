"""The whole pipeline through kfp.local, as the README's first command runs it (`umt run
pipelines/full.py --local`), with very few steps: every artifact and its metadata, the report,
the 2-replica local PyTorchJob, and a second run served from the cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

from umt.catalogue import evaluations, finetunes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UMT = str(Path(sys.executable).parent / "umt")
# Very few steps: this is about the plumbing, not the models. Pretraining jobs keep their 2
# replicas (DDP); fine-tunes and evaluations run on 1 to keep the test lean. Two tasks, one from
# each pretraining stage (action from Stage 1, QA from Stage 2, with its answer list): how every
# catalogue task is wired into the DAG is checked on the compiled spec (test_pipeline_compile,
# test_catalogue); the other tasks show they are switched off.
# Sharding fans out to 2 parts (kfp.local runs them in turn) and merges.
ARGS = ("stage1_steps=3", 'stage1_overrides=["train.log_every=1"]', "stage2_steps=2",
        "finetune_steps=2", "downstream_nodes=1", 'tasks=["action", "qa"]', "shard_parts=2")


def umt_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KFP_RUN_ID", "UMT_JOB_BACKEND", "KUBERNETES_SERVICE_HOST")}
    env["COLUMNS"] = "200"
    return subprocess.run([UMT, "run", "pipelines/full.py", "--local", "--workdir",
                           str(workdir), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def outputs(run_dir: Path, task: str) -> dict:
    entry = json.loads((run_dir / task / "executor_output.json").read_text())
    return {name: value["artifacts"][0] for name, value in entry.get("artifacts", {}).items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipelines")
    done = umt_run(workdir, *ARGS)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    base = workdir / "umt-full"
    (run_dir,) = sorted((base / "root").glob("umt-full-*"))
    return done, base, run_dir


@pytest.mark.slow
def test_local_run_prints_settings_steps_results_and_the_report(first_run):
    done, base, _ = first_run
    out = done.stdout
    assert "model_size=tiny" in out and "nodes=2" in out and "gpus_per_node=0" in out
    assert f"output_prefix={base / 'outputs'}" in out
    assert "32 synthetic clips" in out
    assert re.search(r"ok\s+Stage 1: video pretraining \(\d+ s\)", out)
    assert "results" in out and re.search(r"32 clips in [45] shards", out)  # 2 parts of 8s
    assert f"report: {base / 'report.html'}" in out
    assert (base / "report.html").is_file()


@pytest.mark.slow
def test_local_run_produces_every_artifact_with_its_metadata(first_run):
    _, base, run_dir = first_run
    root = base / "root"
    # Every artifact URI lies under the pipeline root (the backend refuses anything else).
    for entry in run_dir.glob("*/executor_output.json"):
        for value in json.loads(entry.read_text()).get("artifacts", {}).values():
            for art in value["artifacts"]:
                assert Path(art["uri"]).is_relative_to(root), art["uri"]
                assert Path(art["uri"]).exists(), art["uri"]  # a file for every output

    plan = outputs(run_dir, "validate")["plan"]["metadata"]
    assert plan["backend"] == "local" and "stage1" in plan["jobs"]

    dataset = outputs(run_dir, "merge-shards")["dataset"]
    meta = dataset["metadata"]
    assert (meta["num_samples"], meta["num_failed"]) == (32, 0) and meta["num_shards"] in (4, 5)
    assert meta["dataset_json"].startswith(str(base / "outputs" / "datasets"))
    assert json.loads(Path(dataset["uri"]).read_text())["num_samples"] == 32
    parts = [outputs(run_dir / f"for-loop-2-iteration-{i}", "shard-videos")["dataset"]["metadata"]
             for i in range(2)]
    assert [(p["part"], p["num_parts"]) for p in parts] == [(0, 2), (1, 2)]
    assert sum(p["num_samples"] for p in parts) == 32
    assert all(Path(p["dataset_json"]).parent.parent == Path(meta["dataset_json"]).parent
               for p in parts)

    stage1 = outputs(run_dir, "pretrain-stage1")
    model = stage1["model"]["metadata"]
    assert model["stage"] == "stage1" and model["step"] == 3 and model["skipped"] is False
    assert model["architecture"] == "umt_pretrain_vit_tiny_patch16_224"
    assert (model["num_frames"], model["resolution"]) == (4, 64)
    assert model["output_dir"] == str(base / "outputs" / f"stage1-{model['config_hash']}")
    assert model["dataset"] == meta["dataset_json"] and model["parent"] == ""
    assert Path(model["checkpoint"]).is_file()
    assert Path(model["checkpoint"]).is_relative_to(model["output_dir"])
    assert json.loads(Path(stage1["model"]["uri"]).read_text())["checkpoint"] == model["checkpoint"]
    metrics = stage1["metrics"]["metadata"]
    assert metrics["steps"] == 3 and metrics["final_loss"] > 0 and metrics["gpu_hours"] == 0
    assert json.loads(Path(stage1["metrics"]["uri"]).read_text())["metrics"] == metrics
    job = yaml.safe_load(Path(stage1["job"]["uri"]).read_text())
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 1  # 2 replicas
    assert job["metadata"]["labels"]["umt/run-id"].startswith("local-")
    logs = base / "jobs" / job["metadata"]["name"]
    assert (logs / "master-0.log").is_file() and (logs / "worker-0.log").is_file()

    # Evaluations: the job's headline numbers as Metrics; action also a confusion matrix.
    headline = {"evaluate": "top1", "evaluate-2": "t2v_r1", "evaluate-3": "accuracy",
                "evaluate-4": "accuracy"}
    stages = {"evaluate": "eval-action", "evaluate-2": "eval-retrieval", "evaluate-3": "eval-qa",
              "evaluate-4": "eval-mc"}
    for task, stage in stages.items():
        outs = outputs(run_dir, task)
        if stage not in plan["jobs"]:
            assert outs["metrics"]["metadata"]["skipped"] is True, task
            continue
        scores = outs["metrics"]["metadata"]
        assert 0 <= scores[headline[task]] <= 100 and "gpu_hours" in scores, (task, scores)
        assert json.loads(Path(outs["metrics"]["uri"]).read_text())["stage"] == stage
        if stage == "eval-action":
            matrix = outs["confusion"]["metadata"]["confusionMatrix"]
            assert len(matrix["rows"]) == len(matrix["annotationSpecs"]) == 4

    # Every other trainer trained, starting from its parent (or says it was switched off).
    for task, stage in (("pretrain-stage2", "stage2"), ("finetune", "finetune-action"),
                        ("finetune-2", "finetune-retrieval"), ("finetune-3", "finetune-qa")):
        outs = outputs(run_dir, task)
        if stage in plan["jobs"]:
            assert Path(outs["model"]["metadata"]["checkpoint"]).is_file(), task
            assert outs["model"]["metadata"]["parent"], task  # starts from its parent
        else:
            assert all(o["metadata"].get("skipped") is True for o in outs.values()), task

    report = outputs(run_dir, "report")
    page = Path(report["html"]["uri"]).read_text()
    assert "<img" in page and "data:image/png;base64," in page and "Stage 1" in page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []
    markdown = Path(report["markdown"]["uri"]).read_text()
    assert "| Stage 1: video pretraining | done | step 3" in markdown
    for stage in ("Fine-tune: video QA", "Evaluate: video QA"):
        assert f"| {stage} | done |" in markdown
    assert "| Evaluate: multiple choice | skipped | task mc is not in tasks |" in markdown


@pytest.mark.slow
def test_a_second_run_hits_the_cache(first_run):
    _, base, _ = first_run
    checkpoints = sorted((base / "outputs").glob("stage1-*/checkpoints/*"))
    again = umt_run(base.parent, *ARGS)
    assert again.returncode == 0, again.stdout[-4000:]
    hits = re.findall(r"ok\s+(.+) \(cache hit\)", again.stdout)
    # every task (2 shard parts) but the exit handler, validate (never cached: it fingerprints
    # the inputs) and the report (it reads validate's plan): credentials, plan-shards, 2 parts,
    # merge-shards, 2 pretrain, one fine-tune and one evaluation per catalogue entry
    assert len(hits) == 7 + len(finetunes()) + len(evaluations()), again.stdout
    assert re.search(r"ok\s+Clean up unfinished jobs \(\d+ s\)", again.stdout)  # never cached
    assert sorted((base / "outputs").glob("stage1-*/checkpoints/*")) == checkpoints
    assert "report: " in again.stdout


@pytest.mark.slow
def test_terminating_a_local_run_stops_its_task_and_job(tmp_path):
    """SIGTERM to `umt run` (what a closed terminal or a CI timeout sends): the running task
    and the PyTorchJob replicas it launched stop too, nothing is left running."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("KFP_RUN_ID", "UMT_JOB_BACKEND")}
    proc = subprocess.Popen([UMT, "run", "pipelines/full.py", "--local", "--workdir",
                             str(tmp_path), "stage1_steps=500", "run_stage2=false",
                             "tasks=[]"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # until Stage 1's replicas are training
            if list(tmp_path.glob("umt-full/jobs/*/master-0.log")) and any(
                    "step" in p.read_text(errors="replace")
                    for p in tmp_path.glob("umt-full/jobs/*/master-0.log")):
                break
            time.sleep(2)
        else:
            pytest.fail("Stage 1 never started")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out
    time.sleep(2)
    ps = subprocess.run(["ps", "-A", "-o", "args="], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps, "processes of the run are still alive"
