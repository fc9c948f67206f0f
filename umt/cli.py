"""The ``umt`` command line: ``umt --help`` lists everything.

    umt train stage1 --config tiny [key=value ...]   train a stage (see umt/train/)
    umt config show stage1 --config b16              print a resolved config
    umt models                                       list registered model names
    umt shard ...                                    videos -> WebDataset shards (umt/data/)
    umt job render|submit|wait|logs|delete ...       PyTorchJobs (umt/launch/)
    umt doctor                                       cluster / S3 preflight checks
    umt run pipelines/full.py --local                the whole KFP pipeline here (umt/pipeline/)
    umt submit pipelines/full.py --endpoint URL      compile + start a run on a KFP backend
"""

from __future__ import annotations

from typing import List, Optional

import typer

from umt import catalogue
from umt.runtime.entry import OverridesArg, eval_command, stage_command

# Plain tracebacks: they end up in pod logs, where rich panels with locals are noise.
app = typer.Typer(help="Unmasked Teacher (UMT) video foundation models: train, shard, launch.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
train_app = typer.Typer(help="Train a stage (one process, or under torchrun).", no_args_is_help=True)
config_app = typer.Typer(help="Inspect stage configs and presets.", no_args_is_help=True)
app.add_typer(train_app, name="train")
eval_app = typer.Typer(help="Evaluate a checkpoint (one process, or under torchrun).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")

for _stage in catalogue.STAGES.values():
    if _stage.trains:
        train_app.command(_stage.command)(stage_command(_stage.name))
    else:
        eval_app.command(_stage.command)(eval_command(_stage.name))
STAGES = list(catalogue.STAGES)


@config_app.command("show")
def config_show(stage: str = typer.Argument(..., help=f"One of: {', '.join(STAGES)}"),
                config: Optional[str] = typer.Option(
                    None, "--config", "-c", "--preset",
                    help="Preset name (e.g. tiny, b16, l16) or a YAML file."),
                num_samples: Optional[int] = typer.Option(
                    None, "--num-samples", help="Rows of the training data (videos, pairs, "
                    "questions; dataset.json's num_samples): print the steps this run gets."),
                gpus: int = typer.Option(1, "--gpus", help="Processes (GPUs) with --num-samples."),
                overrides: Optional[List[str]] = OverridesArg):
    """Print the fully resolved config (defaults <- preset/YAML <- overrides); required values
    still missing are shown as ``???`` and listed. With ``--num-samples N --gpus G``, also the
    training length in steps that ``train.epochs`` give there (as a YAML comment)."""
    from umt.configs.loader import show_config

    try:
        schema = catalogue.get(stage).config_schema()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        text, missing = show_config(schema, stage, config, overrides or [])
        typer.echo(text.rstrip("\n"))
        for key in missing:
            typer.secho(f"# {key} is required (???): pass {key}=...", fg="yellow", err=True)
        if num_samples is not None:
            typer.echo(f"# schedule at {num_samples} samples on {gpus} GPU(s): "
                       f"{_schedule_preview(schema, stage, config, overrides or [], num_samples, gpus)}")
        elif "\n  epochs: " in text and "\n  steps: null" in text:
            typer.echo("# train.epochs: the steps follow from the data set size and the GPU count at "
                       "start (--num-samples N --gpus G prints them)")
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)


def _schedule_preview(schema, stage: str, config, overrides: list[str], num_samples: int,
                      gpus: int) -> str:
    """``Schedule.describe()`` of the config on ``gpus`` GPUs over ``num_samples`` rows (the
    config is rebuilt from its defaults where required values are still missing: the length
    needs none of them)."""
    from omegaconf import OmegaConf

    from umt.configs import schedule
    from umt.configs.loader import _merged

    merged = _merged(schema, stage, config, overrides)
    train = OmegaConf.to_object(merged.train) if "train" in merged else None
    if train is None or not hasattr(train, "epochs"):
        raise ValueError(f"{stage} does not train: --num-samples does not apply")
    cfg = type("Cfg", (), {"train": train, "optim": OmegaConf.to_object(merged.optim),
                           "data": _section(merged, "data"), "augment": _section(merged, "augment")})
    return schedule.preview(cfg, num_samples, gpus).describe()


def _section(merged, name: str):
    """A section's raw values (required ones may still be ``???``), or None."""
    from omegaconf import OmegaConf

    if name not in merged:
        return None
    values = OmegaConf.to_container(merged[name], resolve=False, throw_on_missing=False)
    return type(name, (), values)


@config_app.command("presets")
def config_presets(stage: str = typer.Argument("stage1")):
    """List the packaged presets of a stage."""
    from umt.configs import list_presets
    from umt.configs.loader import preset_source

    try:
        schema = catalogue.get(stage).config_schema()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo("\n".join(list_presets(preset_source(schema, stage)[0])))


@app.command("models")
def models():
    """List the registered model names (also usable through timm.create_model)."""
    from umt.models import list_models

    typer.echo("\n".join(list_models()))


# Commands owned by other subpackages; each module defines its own typer commands.
from umt.data.cli import shard_app, synthetic  # noqa: E402
from umt.launch.cli import doctor, job_app  # noqa: E402
from umt.pipeline.cli import run, submit  # noqa: E402  (kfp is imported only when they run)

app.add_typer(shard_app, name="shard")
app.command("synthetic")(synthetic)
app.add_typer(job_app, name="job")
app.command("doctor")(doctor)
app.command("run")(run)
app.command("submit")(submit)

if __name__ == "__main__":
    app()
