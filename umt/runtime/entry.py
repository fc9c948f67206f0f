"""The command of one stage (training or evaluation), shared by ``umt train <stage>`` / ``umt
eval <task>`` and ``python -m <the stage's module>`` (what torchrun runs inside a PyTorchJob pod).

It lives here, not in ``umt.cli``, so that a job process imports only its stage's code:
``umt.cli`` pulls in the launcher and the Kubernetes client, which a pod has no use for.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Callable, List, Optional

import typer

from umt import catalogue
from umt.errors import UserError

ConfigOpt = typer.Option(None, "--config", "-c", help="Preset name (e.g. tiny, b16, l16) or a YAML file.")
OverridesArg = typer.Argument(None, help="Overrides as key=value, e.g. train.steps=100 optim.base_lr=1e-4.")

def stage_command(stage: str) -> Callable[..., None]:
    """A typer command that loads the stage's config and runs its ``main``."""

    def command(config: Optional[str] = ConfigOpt, overrides: Optional[List[str]] = OverridesArg):
        module = importlib.import_module(catalogue.get(stage).module)
        try:
            summary = module.main(config, overrides or [])
        except (ValueError, FloatingPointError, UserError) as e:
            # A bad config / checkpoint / input (2) or a run that cannot go on (1): one clear
            # line, not a traceback; UMT_TRACEBACK=1 shows the traceback too.
            if os.environ.get("UMT_TRACEBACK"):
                raise
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2 if isinstance(e, ValueError) else 1)
        if os.environ.get("RANK", "0") == "0":  # one summary line per job, not per process
            typer.echo(f"{stage} finished: {summary}")

    command.__doc__ = (f"Run {stage} ({catalogue.get(stage).module}). Writes config.yaml, metrics.jsonl, "
                       f"summary.json and checkpoints to train.output_dir; resumes from them.")
    return command


def eval_command(stage: str) -> Callable[..., None]:
    """``umt eval <task> --model CKPT --data DATASET --output DIR [key=value ...]``."""
    train_like = stage_command(stage)

    def command(config: Optional[str] = typer.Option("b16", "--config", "-c", help=(
                    "Model size preset (tiny, b16, l16) or a YAML file.")),
                model: str = typer.Option(..., "--model", "-m", help="Checkpoint to evaluate (path or s3:// URI)."),
                data: str = typer.Option(..., "--data", "-d", help="dataset.json of the evaluation set."),
                output: str = typer.Option(..., "--output", "-o", help="Folder or s3:// prefix for metrics.json."),
                overrides: Optional[List[str]] = OverridesArg, **flags):
        chosen = [f"{o.key}={'true' if flags[o.param] is True else flags[o.param]}"
                  for o in extra if flags.get(o.param) not in (None, False)]
        train_like(config, [f"model.pretrained={model}", f"data.source={data}",
                            f"train.output_dir={output}", *chosen, *(overrides or [])])

    extra = catalogue.get(stage).options  # each only sets a config key (same under torchrun)
    # typer reads the options from the signature; **flags itself must never reach it (typer
    # would take it for a required argument), also for evaluations without extra flags
    sig = inspect.signature(command)
    fixed = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    command.__signature__ = sig.replace(parameters=fixed + [
        inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY,
                          default=typer.Option(o.default, o.flag, help=o.help),
                          annotation=bool if isinstance(o.default, bool) else Optional[str])
        for o in extra])
    command.__doc__ = (f"Evaluate a checkpoint ({catalogue.get(stage).module}): writes metrics.json, "
                       f"summary.json and config.yaml to --output.")
    return command


def run_stage_module(stage: str) -> None:
    """``python -m <module> --config ... key=value`` (``umt.train.stage1``, ``umt.eval.qa_job``,
    ...): the same command as ``umt train`` / ``umt eval``."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command()(stage_command(stage))
    single(prog_name=f"python -m {catalogue.get(stage).module}")
