"""Loading official and own checkpoints: every wrapping, strict errors, the allow-list."""

import argparse
import io
import pickle

import pytest
import torch

from umt import storage
from umt.models import CheckpointError, create_model

DIMS = dict(embed_dim=48, depth=2, num_heads=3)
X = torch.randn(1, 3, 8, 224, 224)


def stage1_sd(seed=0):
    torch.manual_seed(seed)
    return create_model("umt_pretrain_vit_tiny_patch16_224", teacher_dim=16, align_layers=2,
                        **DIMS).state_dict()


def finetuned_sd(num_classes=5, seed=1):
    torch.manual_seed(seed)
    return create_model("umt_vit_tiny_patch16_224", num_classes=num_classes, **DIMS).state_dict()


def save(path, obj):
    torch.save(obj, path)
    return str(path)


def test_official_stage1_into_student_and_backbone(tmp_path):
    sd = stage1_sd()
    # as run_umt_pretraining.py saves: model + optimizer + epoch + args (an argparse.Namespace)
    path = save(tmp_path / "s1.pth", {"model": sd, "epoch": 200, "args": argparse.Namespace(lr=1.5e-4)})
    student = create_model("umt_pretrain_vit_tiny_patch16_224", pretrained=path, teacher_dim=16,
                           align_layers=2, **DIMS)
    for k, v in student.state_dict().items():
        assert torch.equal(v, sd[k]), k
    backbone = create_model("umt_vit_tiny_patch16_224", pretrained=path, num_classes=3, **DIMS)
    assert torch.equal(backbone.blocks[1].attn.q_bias, sd["encoder.blocks.1.attn.q_bias"])
    assert torch.equal(backbone.patch_embed.proj.weight, sd["encoder.patch_embed.proj.weight"])


def test_official_finetuned_fp16_module_wrapped(tmp_path):
    sd = finetuned_sd()
    path = save(tmp_path / "ft.pth", {"module": {k: v.half() for k, v in sd.items()}})
    m = create_model("umt_vit_tiny_patch16_224", pretrained=path, num_classes=5, **DIMS)
    for k, v in m.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, sd[k].half().float())


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "ddp_prefix", "compile_prefix"])
def test_wrappings(tmp_path, wrap):
    sd = finetuned_sd()
    obj = {"bare": sd, "model": {"model": sd}, "state_dict": {"state_dict": sd},
           "ddp_prefix": {f"module.{k}": v for k, v in sd.items()},
           "compile_prefix": {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}}}[wrap]
    m = create_model("umt_vit_tiny_patch16_224", pretrained=save(tmp_path / "c.pth", obj),
                     num_classes=5, **DIMS)
    assert torch.equal(m.head.weight, sd["head.weight"])


def test_s3_uri(tmp_path, s3_bucket):
    sd = finetuned_sd()
    buf = io.BytesIO()
    torch.save({"model": sd}, buf)
    storage.write_bytes(f"{s3_bucket}/ckpt/ft.pth", buf.getvalue())
    # umt.models never reads storage: the runtime reads the object, the model loads what it read
    from umt.runtime.weights import read_checkpoint

    m = create_model("umt_vit_tiny_patch16_224", pretrained=read_checkpoint(f"{s3_bucket}/ckpt/ft.pth"),
                     num_classes=5, **DIMS)
    assert torch.equal(m.fc_norm.weight, sd["fc_norm.weight"])


def test_head_of_another_size_is_replaced(tmp_path):
    path = save(tmp_path / "k710.pth", {"module": finetuned_sd(num_classes=7)})
    m = create_model("umt_vit_tiny_patch16_224", pretrained=path, num_classes=4, **DIMS)
    assert m.head.weight.shape == (4, 48)


def test_stage2_vision_encoder(tmp_path):
    sd = {f"vision_encoder.{k}": v for k, v in stage1_sd().items()}
    sd |= {"vision_encoder.pool_norm.weight": torch.ones(48), "text_encoder.bert.x": torch.ones(2),
           "clip_teacher.proj": torch.ones(2, 2), "temp": torch.tensor(0.07),
           "vision_proj.weight": torch.ones(4, 48)}
    m = create_model("umt_vit_tiny_patch16_224", pretrained=save(tmp_path / "s2.pth", {"model": sd}),
                     num_classes=2, **DIMS)
    assert torch.equal(m.blocks[0].norm1.weight, sd["vision_encoder.encoder.blocks.0.norm1.weight"])


def test_checkpoint_pos_embed_loaded_when_it_fits(tmp_path):
    m16 = create_model("umt_vit_tiny_patch16_224", num_frames=16, img_size=112, **DIMS)
    sd = dict(m16.state_dict())
    sd["pos_embed"] = sd["pos_embed"] + 1.0
    m = create_model("umt_vit_tiny_patch16_224", num_frames=16, img_size=112,
                     pretrained=save(tmp_path / "p.pth", sd), **DIMS)
    torch.testing.assert_close(m.pos_embed, sd["pos_embed"])
    # into an 8x224 model the 16x112 table does not fit: the model's own table stands
    m8 = create_model("umt_vit_tiny_patch16_224", pretrained=save(tmp_path / "p.pth", sd), **DIMS)
    assert m8.pos_embed.shape == (1, 1568, 48)


def test_missing_key_is_named(tmp_path):
    sd = finetuned_sd()
    del sd["blocks.1.attn.v_bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*blocks\.1\.attn\.v_bias"):
        create_model("umt_vit_tiny_patch16_224", pretrained=save(tmp_path / "m.pth", sd), num_classes=5, **DIMS)


def test_unexpected_key_is_named(tmp_path):
    sd = finetuned_sd() | {"blocks.0.attn.qkv.bias": torch.zeros(144)}
    with pytest.raises(CheckpointError, match=r"unexpected keys.*blocks\.0\.attn\.qkv\.bias"):
        create_model("umt_vit_tiny_patch16_224", pretrained=save(tmp_path / "u.pth", sd), num_classes=5, **DIMS)


def test_shape_mismatch_and_wrong_depth(tmp_path):
    path = save(tmp_path / "s.pth", finetuned_sd())
    with pytest.raises(CheckpointError, match="shape mismatches"):
        create_model("umt_vit_tiny_patch16_224", pretrained=path, num_classes=5, embed_dim=96,
                     depth=2, num_heads=3)
    with pytest.raises(CheckpointError, match="missing keys.*blocks.2"):
        create_model("umt_vit_tiny_patch16_224", pretrained=path, num_classes=5, embed_dim=48,
                     depth=3, num_heads=3)


def test_finetuned_into_stage1_student_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="clip_decoder"):
        create_model("umt_pretrain_vit_tiny_patch16_224", pretrained=save(tmp_path / "f.pth", finetuned_sd()),
                     teacher_dim=16, align_layers=2, **DIMS)


class Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_nothing_in_a_checkpoint_is_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model("umt_vit_tiny_patch16_224", pretrained=str(path), **DIMS)
    assert "executed" not in capsys.readouterr().out


def test_not_found_and_not_tensors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        create_model("umt_vit_tiny_patch16_224", pretrained=str(tmp_path / "nope.pth"), **DIMS)
    with pytest.raises(CheckpointError, match="not a tensor"):
        create_model("umt_vit_tiny_patch16_224", pretrained=save(tmp_path / "x.pth", {"a": 1}), **DIMS)


def test_official_multimodality_checkpoint_with_an_easydict_config_loads(tmp_path, monkeypatch):
    """Official Stage-2 / retrieval / QA training checkpoints pickle their config as
    ``utils.easydict.EasyDict``: it is read as data (an OrderedDict), the weights load."""
    import sys
    import types

    utils, easydict = types.ModuleType("utils"), types.ModuleType("utils.easydict")

    class EasyDict(dict):  # the official class's behaviour: items are also attributes
        def __init__(self, d=None):
            super().__init__(d or {})
            for k, v in self.items():
                setattr(self, k, v)

        def __setattr__(self, k, v):
            super().__setattr__(k, v)
            self[k] = v

    EasyDict.__module__, EasyDict.__qualname__ = "utils.easydict", "EasyDict"
    easydict.EasyDict, utils.easydict = EasyDict, easydict
    monkeypatch.setitem(sys.modules, "utils", utils)
    monkeypatch.setitem(sys.modules, "utils.easydict", easydict)
    path = tmp_path / "ckpt_best.pth"
    torch.save({"model": finetuned_sd(), "config": EasyDict({"model": EasyDict({"embed_dim": 48}), "lr": 1e-4}),
                "epoch": 9, "global_step": 1000}, path)
    monkeypatch.delitem(sys.modules, "utils")
    monkeypatch.delitem(sys.modules, "utils.easydict")
    from umt.models.checkpoint import read_checkpoint

    obj = read_checkpoint(str(path))
    assert obj["config"]["model"]["embed_dim"] == 48 and obj["epoch"] == 9
    create_model("umt_vit_tiny_patch16_224", pretrained=str(path), num_classes=5, **DIMS)
