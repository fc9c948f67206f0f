"""One config system: dataclass defaults <- preset/YAML <- key=value overrides."""

import pytest
import yaml
from typer.testing import CliRunner

from umt.cli import app
from umt.configs import Stage1Config, list_presets, load_config

SRC = ["data.source=s3://bucket/k710/dataset.json"]


def test_presets_exist_and_load():
    assert {"tiny", "b16", "l16"} <= set(list_presets("stage1"))
    for name in list_presets("stage1"):
        assert isinstance(load_config(Stage1Config, "stage1", name, SRC), Stage1Config)


def test_gpu_presets_require_a_dataset():
    """A GPU job must not silently train on the synthetic demo source."""
    for name in ("b16", "l16"):
        with pytest.raises(ValueError, match="data.source"):
            load_config(Stage1Config, "stage1", name)


def test_b16_and_l16_follow_the_paper_recipe():
    for name, dp, teacher, res in (("b16", 0.1, "ViT-B-16", 224), ("l16", 0.2, "ViT-L-14", 196)):
        c = load_config(Stage1Config, "stage1", name, SRC)
        assert c.model.num_frames == 8 and c.model.img_size == 224 and c.model.tubelet_size == 1
        assert c.mask.type == "attention" and c.mask.ratio == 0.8
        assert c.model.align_layers == c.teacher.return_layers == 6
        assert c.optim.betas == [0.9, 0.95] and c.optim.weight_decay == 0.05 and c.optim.base_lr == 1.5e-4
        assert c.model.drop_path_rate == dp and c.teacher.model_name == teacher
        assert c.teacher.input_resolution == res and c.train.precision == "bf16"


def test_overrides_and_yaml_file(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("train: {steps: 7}\noptim: {betas: [0.9, 0.99]}\n")
    c = load_config(Stage1Config, "stage1", str(f), ["train.batch_size=3", "mask.type=tube", *SRC])
    assert (c.train.steps, c.train.batch_size, c.optim.betas, c.mask.type) == (7, 3, [0.9, 0.99], "tube")


@pytest.mark.parametrize("bad,msg", [(["train.steps=abc"], "steps"), (["train.nope=1"], "nope"),
                                     (["trainsteps"], "key=value")])
def test_bad_overrides_name_the_key(bad, msg):
    with pytest.raises(ValueError, match=msg):
        load_config(Stage1Config, "stage1", "tiny", bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="neither a YAML file nor a stage1 preset"):
        load_config(Stage1Config, "stage1", "huge")


def test_cli_config_show_and_errors():
    r = CliRunner().invoke(app, ["config", "show", "stage1", "--config", "tiny", "train.steps=3"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.output)["train"]["steps"] == 3
    r = CliRunner().invoke(app, ["train", "stage1", "--config", "tiny", "train.steps=x"])
    assert r.exit_code == 2 and "steps" in r.output
    for args in (["--help"], ["train", "--help"], ["train", "stage1", "--help"], ["config", "--help"]):
        assert CliRunner().invoke(app, args).exit_code == 0


def _shipped_presets():
    from umt import catalogue
    from umt.configs.loader import preset_source

    for name, stage in catalogue.STAGES.items():
        owner = preset_source(stage.config_schema(), name)[0]
        for preset in list_presets(owner):
            yield name, preset


@pytest.mark.parametrize("stage,preset", sorted(set(_shipped_presets())))
def test_every_shipped_preset_loads_and_passes_the_checks(stage, preset):
    """Each preset of each stage of the catalogue, with only what a preset cannot know (the
    data, and the checkpoint an evaluation reads): types, ranges and the training length."""
    from umt import catalogue
    from umt.pipeline.plan import data_overrides

    entry = catalogue.get(stage)
    overrides = data_overrides(stage, ["s3://bucket/data/dataset.json"])
    if not entry.trains:
        overrides.append("model.pretrained=s3://bucket/run/checkpoints/step_00000001.pt")
    cfg = load_config(entry.config_schema(), stage, preset, overrides)
    if entry.trains:
        assert cfg.train.steps is not None or cfg.train.epochs is not None


@pytest.mark.parametrize("stage,preset", sorted({(s, p) for s, p in _shipped_presets()
                                                 if p != "tiny" and not s.startswith("eval")}))
def test_paper_presets_state_epochs_from_their_official_script(stage, preset):
    """A paper-scale preset trains for the official epochs whatever the GPU count: epochs and
    warmup epochs, no step count, and a comment naming the official exp script."""
    from umt import catalogue
    from umt.configs.loader import preset_path
    from umt.pipeline.plan import data_overrides

    cfg = load_config(catalogue.get(stage).config_schema(), stage, preset,
                      data_overrides(stage, ["s3://bucket/data/dataset.json"]))
    assert cfg.train.epochs and cfg.train.warmup_epochs is not None and cfg.train.steps is None
    assert cfg.optim.warmup_steps is None
    text = preset_path(stage, preset).read_text()
    assert "/exp/" in text and (".sh" in text or ".py" in text)
