"""A pipeline with ``job_backend=trainjob`` through kfp.local: its training task renders a
TrainJob and the local TrainJob executor runs the real Stage-1 job in 2 node processes (the
pretraining pipeline, Stage 1 only, few steps: the whole DAG is tests/test_pipeline_local.py's,
on the same tasks and components)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")

ROOT = Path(__file__).resolve().parents[1]
UMT = str(Path(sys.executable).parent / "umt")


@pytest.mark.slow
def test_the_pretraining_pipeline_runs_its_stage1_as_a_local_trainjob(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("KFP_RUN_ID", "UMT_JOB_BACKEND", "KUBERNETES_SERVICE_HOST")}
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [UMT, "run", "pipelines/pretrain.py", "--local", "--workdir", str(tmp_path),
         "job_backend=trainjob", "stage1_steps=2", "run_stage2=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    (base,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (run_dir,) = sorted((base / "root").glob("*-*"))
    plan = json.loads((run_dir / "validate" / "executor_output.json").read_text())
    (art,) = plan["artifacts"]["plan"]["artifacts"]
    assert art["metadata"]["backend"] == "local-trainjob"
    entry = json.loads((run_dir / "pretrain-stage1" / "executor_output.json").read_text())
    job = yaml.safe_load(Path(entry["artifacts"]["job"]["artifacts"][0]["uri"]).read_text())
    assert job["kind"] == "TrainJob" and job["spec"]["trainer"]["numNodes"] == 2
    assert job["spec"]["runtimeRef"]["name"] == "umt-torch"
    model = entry["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert model["step"] == 2 and Path(model["checkpoint"]).is_file()
    logs = base / "jobs" / job["metadata"]["name"]
    assert (logs / "node-0.log").is_file() and (logs / "node-1.log").is_file()
    assert "rank 1" in (logs / "node-1.log").read_text()  # the second node trained too
