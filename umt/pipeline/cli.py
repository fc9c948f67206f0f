"""``umt run`` and ``umt submit``, registered by ``umt/cli.py``::

    umt run pipelines/full.py --local [key=value ...]          # kfp.local, this machine
    umt submit pipelines/full.py [--endpoint URL] [--experiment X] [--service-account SA]
        [--pipeline-root s3://...] [--no-cache] [--upload --version V] [key=value ...]

``key=value`` are pipeline parameters (``run_qa=false``, ``stage1_steps=10``,
``stage1_overrides='["train.log_every=1"]'``), typed from the compiled pipeline.
Exit codes: 0 success; 1 the run (or submission) failed; 2 bad arguments.
"""

from __future__ import annotations

import os
from typing import Annotated, List, Optional

import typer

ArgsArg = typer.Argument(None, help="Pipeline parameters as name=value (typed from the pipeline).")


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline file, e.g. pipelines/full.py.")],
    arguments: Optional[List[str]] = ArgsArg,
    local: Annotated[bool, typer.Option(
        "--local", help="Run here with kfp.local (the only way `umt run` runs; use `umt "
                        "submit` for a cluster).")] = False,
    workdir: Annotated[str, typer.Option(
        "--workdir", help="Pipeline root, outputs, job logs and the report go under "
                          "<workdir>/<pipeline name>/.")] = "runs/pipelines",
    cache: Annotated[bool, typer.Option("--cache/--no-cache",
                                        help="Reuse results of unchanged tasks.")] = True,
    function: Annotated[Optional[str], typer.Option(
        "--function", help="The pipeline to run when the file defines several.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Stream every task's full log.")] = False,
) -> None:
    """Compile a pipeline and run the compiled spec on this machine (kfp.local)."""
    from umt.pipeline.loader import PipelineError
    from umt.pipeline.local import print_results, run_local

    if not local:
        _fail("`umt run` runs pipelines locally: add --local (for a cluster: umt submit)", 2)
    try:
        result = run_local(pipeline, arguments or [], workdir=workdir, function=function,
                           cache=cache, verbose=verbose)
    except PipelineError as e:
        _fail(str(e), 2)
    except KeyboardInterrupt:
        _fail("interrupted (the running task and its job were stopped; run again to resume: "
              "finished tasks come from the cache)", 130)
    print_results(result)
    if not result.ok:
        raise typer.Exit(1)


def submit(
    pipeline: Annotated[str, typer.Argument(help="Pipeline file, e.g. pipelines/full.py.")],
    arguments: Optional[List[str]] = ArgsArg,
    endpoint: Annotated[Optional[str], typer.Option(
        "--endpoint", help="KFP API URL (default: $KFP_ENDPOINT, $KF_PIPELINES_ENDPOINT, then "
                           "in-cluster / kubeconfig).")] = None,
    experiment: Annotated[str, typer.Option("--experiment", "-e",
                                            help="Experiment (created if needed).")] = "umt",
    run_name: Annotated[Optional[str], typer.Option("--run-name", "-r")] = None,
    namespace: Annotated[Optional[str], typer.Option(
        "--namespace", help="Multi-user KFP: the profile namespace.")] = None,
    service_account: Annotated[Optional[str], typer.Option(
        "--service-account", help="Service account the run's pods use (standalone KFP: "
                                  "pipeline-runner; multi-user: default-editor).")] = None,
    pipeline_root: Annotated[Optional[str], typer.Option(
        "--pipeline-root", help="Artifact root, e.g. s3://bucket/pipelines (default: the "
                                "kfp-launcher ConfigMap's).")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache",
                                        help="--no-cache: run every task again.")] = True,
    upload: Annotated[bool, typer.Option(
        "--upload", help="Upload as a named pipeline version and run that.")] = False,
    version: Annotated[Optional[str], typer.Option("--version", help="Version name for "
                                                                     "--upload.")] = None,
    pipeline_name: Annotated[Optional[str], typer.Option(
        "--pipeline-name", help="Name for --upload (default: the pipeline's).")] = None,
    token_path: Annotated[Optional[str], typer.Option(
        "--token-path", help="ServiceAccount token file (default: "
                             "$KF_PIPELINES_SA_TOKEN_PATH).")] = None,
    function: Annotated[Optional[str], typer.Option("--function")] = None,
) -> None:
    """Compile a pipeline and start a run on a Kubeflow Pipelines backend."""
    from umt.pipeline.loader import PipelineError
    from umt.pipeline.submit import submit as do_submit

    try:
        do_submit(pipeline, arguments or [], endpoint=endpoint, experiment=experiment,
                  run_name=run_name, namespace=namespace, service_account=service_account,
                  pipeline_root=pipeline_root, cache=cache, upload=upload, version=version,
                  pipeline_name=pipeline_name, function=function, token_path=token_path)
    except PipelineError as e:
        _fail(str(e), 2)
    except Exception as e:  # the backend's answer (ApiException, connection refused)
        if os.environ.get("UMT_TRACEBACK"):
            raise
        _fail(f"submitting failed: {e}", 1)
