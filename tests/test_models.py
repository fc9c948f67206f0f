"""Student ViT and Stage-1 student: shapes, token counts, official layout, registry."""

import math

import pytest
import timm
import torch

from umt.models import PretrainVisionTransformer, VisionTransformer, create_model, list_models
from umt.models.pos_embed import interpolated_table, sinusoid_table

SMALL = dict(embed_dim=48, depth=2, num_heads=3)


def test_names_registered_in_umt_and_timm():
    for size in ("tiny", "small", "base", "large"):
        for name in (f"umt_vit_{size}_patch16_224", f"umt_pretrain_vit_{size}_patch16_224"):
            assert name in list_models()
            assert name in timm.list_models("umt_*")
    m = timm.create_model("umt_vit_base_patch16_224", num_classes=7, depth=1)
    assert isinstance(m, VisionTransformer)
    assert (m.embed_dim, m.head.out_features, len(m.blocks)) == (768, 7, 1)
    assert m.blocks[0].attn.num_heads == 12


@pytest.mark.parametrize("size,dims", [("tiny", (192, 12, 3)), ("small", (384, 12, 6)),
                                       ("base", (768, 12, 12)), ("large", (1024, 24, 16))])
def test_sizes(size, dims):
    m = create_model(f"umt_vit_{size}_patch16_224", img_size=32, num_frames=1)
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads) == dims


def test_backbone_8x224_has_1568_tokens_and_logits():
    m = create_model("umt_vit_tiny_patch16_224", num_classes=5, **SMALL).eval()
    x = torch.randn(2, 3, 8, 224, 224)
    tokens = m.forward_features(x)
    assert tokens.shape == (2, 1568, 48)  # 8 * 14 * 14: no temporal downsampling
    assert m(x).shape == (2, 5)
    # The logits are mean pooling -> fc_norm -> head of those tokens.
    torch.testing.assert_close(m(x), m.head(m.fc_norm(tokens.mean(1))))


def test_tubelet_two_halves_the_tokens():
    m = create_model("umt_vit_tiny_patch16_224", tubelet_size=2, **SMALL)
    assert m.forward_features(torch.randn(1, 3, 8, 224, 224)).shape[1] == 784


def test_official_parameter_layout():
    m = create_model("umt_vit_tiny_patch16_224", num_classes=3, **SMALL)
    keys = set(m.state_dict())
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.attn.q_bias",
            "blocks.0.attn.v_bias", "blocks.0.attn.qkv.weight", "fc_norm.weight", "head.weight"} <= keys
    assert "blocks.0.attn.qkv.bias" not in keys and "cls_token" not in keys
    assert "pos_embed" not in keys  # fixed 8x14x14 table: not saved, as official
    assert m.patch_embed.proj.kernel_size == (1, 16, 16)
    assert m.blocks[0].norm1.eps == 1e-6 and isinstance(m.blocks[0].mlp.act, torch.nn.GELU)
    assert m.blocks[0].mlp.fc1.out_features == 4 * 48


def test_drop_path_is_linear():
    m = create_model("umt_vit_tiny_patch16_224", drop_path_rate=0.3, embed_dim=48, depth=4, num_heads=3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in m.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_attention_uses_sdpa(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    create_model("umt_vit_tiny_patch16_224", img_size=32, **SMALL)(torch.randn(1, 3, 8, 32, 32))
    assert len(calls) == SMALL["depth"]


def test_sinusoid_table_matches_formula():
    n, d = 50, 10
    table = sinusoid_table(n, d)[0].double()
    for p in (0, 7, 49):
        for j in range(d):
            angle = p / math.pow(10000, 2 * (j // 2) / d)
            expect = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert table[p, j].item() == pytest.approx(expect, abs=1e-6)


def test_pos_table_interpolation_and_persistence():
    same = interpolated_table((8, 14, 14), 16)
    torch.testing.assert_close(same, sinusoid_table(1568, 16))
    assert interpolated_table((16, 7, 7), 16).shape == (1, 784, 16)
    m = create_model("umt_vit_tiny_patch16_224", num_frames=16, img_size=112, **SMALL)
    assert "pos_embed" in m.state_dict()  # interpolated: saved, as the official code saves it


def test_wrong_input_size_is_a_clear_error():
    m = create_model("umt_vit_tiny_patch16_224", **SMALL)
    with pytest.raises(ValueError, match="built for 8x224x224"):
        m(torch.randn(1, 3, 4, 224, 224))


def test_pretrain_student_visible_tokens_and_unit_outputs():
    m = create_model("umt_pretrain_vit_tiny_patch16_224", teacher_dim=32, align_layers=2, **SMALL)
    assert isinstance(m, PretrainVisionTransformer)
    mask = torch.ones(2, 1568, dtype=torch.bool)
    keep = torch.rand(2, 8, 196).argsort(-1)[..., :40] + torch.arange(8)[:, None] * 196
    mask.scatter_(1, keep.flatten(1), False)
    out = m(torch.randn(2, 3, 8, 224, 224), mask)
    assert out.shape == (2, 2, 320, 32)  # [K, B, N_vis, teacher_dim]
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 2, 320))
    keys = set(m.state_dict())
    assert {"encoder.norm.weight", "clip_decoder.1.head.weight", "clip_decoder.1.norm.bias"} <= keys


def test_pretrain_student_outputs_follow_layer_order():
    """Head k aligns block (depth - K + k): changing only the last block changes only head K-1."""
    m = create_model("umt_pretrain_vit_tiny_patch16_224", teacher_dim=16, align_layers=2,
                     embed_dim=48, depth=3, num_heads=3).eval()
    x, mask = torch.randn(1, 3, 8, 224, 224), torch.zeros(1, 1568, dtype=torch.bool)
    before = m(x, mask)
    with torch.no_grad():
        m.encoder.blocks[2].mlp.fc2.bias.add_(1.0)
    after = m(x, mask)
    torch.testing.assert_close(before[0], after[0])
    assert not torch.allclose(before[1], after[1])


def test_unequal_visible_counts_rejected():
    m = create_model("umt_pretrain_vit_tiny_patch16_224", teacher_dim=16, align_layers=1, **SMALL)
    mask = torch.zeros(2, 1568, dtype=torch.bool)
    mask[0, :10] = True
    with pytest.raises(ValueError, match="same number of visible tokens"):
        m(torch.randn(2, 3, 8, 224, 224), mask)
