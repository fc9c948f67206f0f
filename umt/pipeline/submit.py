"""``umt submit <pipeline.py>``: compile and start a run on a KFP backend in one step.

    umt submit pipelines/full.py --endpoint https://kfp.example.com --experiment umt \\
        output_prefix=s3://bucket/runs input_videos=s3://bucket/k710/train.csv
    umt submit pipelines/full.py --upload --version v3 ...   # a named, versioned pipeline

``kfp run create`` (alias ``kfp run submit``) takes only compiled packages; this compiles the
``.py`` first and goes through ``kfp.Client``. Endpoint: ``--endpoint``, else ``KFP_ENDPOINT``
(what the ``kfp`` CLI reads), else ``KF_PIPELINES_ENDPOINT`` (what ``kfp.Client`` reads), else
kfp.Client's own discovery (in-cluster service, kubeconfig port-forward). Authentication:
``--token-path`` or ``KF_PIPELINES_SA_TOKEN_PATH`` (a projected ServiceAccount token, refreshed
by the kubelet), or ``KF_PIPELINES_TOKEN`` (a bearer token). Arguments are checked against the
compiled pipeline's parameters and typed from them before anything is sent.

``--no-cache`` rewrites the compiled package so that no task of any DAG is cached (kfp.Client's
``enable_caching`` reaches only top-level tasks, and every task of ours is inside the exit
handler's DAG). With ``--upload --version V`` the pipeline is uploaded under a stable name (created the first
time, a new version afterwards) and the run starts from that version: the KFP backend reuses
cache entries only within one pipeline name and namespace.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from umt.pipeline import loader

ENDPOINT_ENVS = ("KFP_ENDPOINT", "KF_PIPELINES_ENDPOINT")
TOKEN_PATH_ENV, TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_TOKEN"


def resolve_endpoint(endpoint: str | None) -> str | None:
    if endpoint:
        return endpoint
    for env in ENDPOINT_ENVS:
        if os.environ.get(env):
            return os.environ[env]
    return None  # kfp.Client finds the in-cluster service or uses the kubeconfig


def make_client(endpoint: str | None = None, *, namespace: str | None = None,
                token_path: str | None = None) -> Any:
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {"host": resolve_endpoint(endpoint)}
    if namespace:
        kwargs["namespace"] = namespace
    token_path = token_path or os.environ.get(TOKEN_PATH_ENV)
    if token_path:
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=token_path)
    elif os.environ.get(TOKEN_ENV):
        kwargs["existing_token"] = os.environ[TOKEN_ENV]
    import warnings

    with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(**kwargs)


def disable_caching(package: str) -> None:
    """Turn caching off for every task of every DAG of a compiled package, in place."""
    import yaml

    path = Path(package)
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    dags = [spec["root"].get("dag", {})] + [c["dag"] for c in spec.get("components", {}).values()
                                            if "dag" in c]
    for dag in dags:
        for task in (dag.get("tasks") or {}).values():
            task["cachingOptions"] = {}
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    pipeline_id: str = ""
    version_id: str = ""
    package: str = ""


def submit(pipeline_file: str, items: Sequence[str] = (), *, endpoint: str | None = None,
           experiment: str = "umt", run_name: str | None = None, namespace: str | None = None,
           service_account: str | None = None, pipeline_root: str | None = None,
           cache: bool = True, upload: bool = False, version: str | None = None,
           pipeline_name: str | None = None, function: str | None = None,
           token_path: str | None = None, package_dir: str | None = None,
           client: Any = None, out: Any = None) -> Submitted:
    """Compile ``pipeline_file`` and start a run; returns the ids the backend gave."""
    out = out or sys.stdout
    if upload and not version:
        raise loader.PipelineError("--upload needs --version V (the name of the new version)")
    pipeline = loader.load_pipeline(pipeline_file, function)
    folder = Path(package_dir or tempfile.mkdtemp(prefix="umt-submit-"))
    package = str(loader.compile_pipeline(pipeline, folder / f"{pipeline.name}.yaml"))
    arguments = loader.parse_arguments(items, loader.parameters(loader.read_spec(package)))
    if not cache:
        if upload:
            raise loader.PipelineError(
                "--no-cache with --upload: runs of an uploaded version use its compiled caching "
                "settings; submit the package without --upload to rerun everything")
        disable_caching(package)
    client = client or make_client(endpoint, namespace=namespace, token_path=token_path)
    # Caching is never passed to kfp.Client: its enable_caching only reaches the top-level
    # tasks (ours sit inside the ExitHandler's DAG), and True would turn it on for the exit
    # task. --no-cache rewrites the package instead (disable_caching).
    caching = None
    run_name = run_name or f"{pipeline.name} {Path(pipeline_file).stem}"
    if not upload:
        result = client.create_run_from_pipeline_package(
            package, arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=namespace, pipeline_root=pipeline_root, enable_caching=caching,
            service_account=service_account)
        run = result.run_info
        done = Submitted(result.run_id, getattr(run, "experiment_id", "") or "", package=package)
    else:
        name = pipeline_name or pipeline.name
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            created = client.upload_pipeline(package, pipeline_name=name,
                                             description=pipeline.description or "")
            pipeline_id = created.pipeline_id
            out.write(f"uploaded pipeline {name} ({pipeline_id})\n")
        ver = client.upload_pipeline_version(package, pipeline_version_name=version,
                                             pipeline_id=pipeline_id)
        out.write(f"uploaded version {version} of {name} ({ver.pipeline_version_id})\n")
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(exp.experiment_id, run_name, params=arguments,
                                  pipeline_id=pipeline_id, version_id=ver.pipeline_version_id,
                                  pipeline_root=pipeline_root, enable_caching=caching,
                                  service_account=service_account)
        done = Submitted(run.run_id, exp.experiment_id, pipeline_id, ver.pipeline_version_id,
                         package)
    out.write(f"run {done.run_id} started in experiment {experiment}\n")
    return done
