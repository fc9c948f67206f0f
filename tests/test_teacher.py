"""The CLIP teacher: frozen, per-frame, attention from the fused path, weight formats."""

import pytest
import torch

from umt.models import CheckpointError, CLIPTeacher

TINY = dict(vision_cfg={"width": 64, "layers": 3, "heads": 4, "patch_size": 16, "image_size": 64},
            embed_dim=32)


def make(**kw):
    torch.manual_seed(0)
    return CLIPTeacher("ViT-B-16", pretrained=kw.pop("pretrained", None),
                       return_layers=kw.pop("return_layers", 2),
                       input_resolution=kw.pop("input_resolution", 64), **{**TINY, **kw})


def test_shapes_unit_targets_and_attention():
    t = make()
    targets, attn = t(torch.randn(2, 3, 4, 64, 64))
    assert targets.shape == (2, 2, 4 * 16, 32) and attn.shape == (2, 4, 16)
    torch.testing.assert_close(targets.norm(dim=-1), torch.ones(2, 2, 64))
    assert (attn > 0).all() and (attn.sum(-1) < 1).all()  # the class token's own share is excluded


def test_frozen():
    t = make()
    assert all(not p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training
    x = torch.randn(1, 3, 2, 64, 64, requires_grad=True)
    targets, _ = t(x)
    assert not targets.requires_grad


def test_attention_equals_multihead_attention_weights():
    """Our class-token attention = nn.MultiheadAttention(need_weights=True) head-averaged row 0."""
    t = make()
    v = t.visual
    frames = torch.randn(3, 3, 64, 64)
    x = v.conv1(frames).flatten(2).transpose(1, 2)
    x = v.ln_pre(torch.cat([v.class_embedding.expand(3, 1, -1), x], 1) + v.positional_embedding)
    for blk in t.blocks[:-1]:
        x = blk(x)
    last = t.blocks[-1]
    y = last.ln_1(x)
    _, weights = last.attn(y, y, y, need_weights=True, average_attn_weights=True)
    _, attn = t(frames.permute(1, 0, 2, 3).unsqueeze(0))
    torch.testing.assert_close(attn[0], weights[:, 0, 1:], atol=1e-6, rtol=1e-5)


def test_frames_are_independent_images():
    t = make()
    clip = torch.randn(1, 3, 3, 64, 64)
    targets, attn = t(clip)
    single, attn1 = t(clip[:, :, 1:2])
    torch.testing.assert_close(targets[:, :, 16:32], single[:, :, :16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn[:, 1], attn1[:, 0])


def test_resizes_to_input_resolution():
    t = make(input_resolution=48)  # 3x3 grid
    targets, attn = t(torch.randn(1, 3, 2, 64, 64))
    assert t.grid == 3 and targets.shape == (2, 1, 18, 32) and attn.shape == (1, 2, 9)


def test_openai_format_state_dict_roundtrip(tmp_path):
    src = make()
    sd = {k: v.clone() for k, v in src.visual.state_dict().items()}
    clip = torch.randn(1, 3, 2, 64, 64)
    want = src(clip)
    for name, d in {"plain": sd,
                    "inflated_conv": {**sd, "conv1.weight": sd["conv1.weight"].unsqueeze(2)},
                    "full_clip": {f"visual.{k}": v for k, v in sd.items()} | {"logit_scale": torch.ones(())},
                    "fp16": {k: v.half() for k, v in sd.items()}}.items():
        path = tmp_path / f"{name}.pth"
        torch.save(sd if name == "plain" else d, path)
        got = make(pretrained=str(path))(clip)
        tol = 2e-2 if name == "fp16" else 1e-6
        torch.testing.assert_close(got[0], want[0], atol=tol, rtol=0)
        torch.testing.assert_close(got[1], want[1], atol=tol, rtol=0)


def test_bad_teacher_weights_name_the_keys(tmp_path):
    sd = make().visual.state_dict()
    del sd["ln_post.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="ln_post.weight"):
        make(pretrained=str(tmp_path / "bad.pth"))


def test_return_layers_checked():
    with pytest.raises(ValueError, match="return_layers"):
        make(return_layers=9)
