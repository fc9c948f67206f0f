"""Masks: exact visible counts per frame; semantic masking samples in proportion to attention."""

import pytest
import torch

from umt.masking import make_mask, num_visible, random_mask, semantic_mask, tube_mask, visible_count


def test_8x224_at_0_8_keeps_40_per_frame_320_per_clip():
    attn = torch.rand(3, 8, 196).softmax(-1)
    mask = semantic_mask(attn, 0.8)
    assert mask.shape == (3, 1568) and mask.dtype == torch.bool
    visible_per_frame = (~mask).view(3, 8, 196).sum(-1)
    assert (visible_per_frame == 40).all()
    assert num_visible(196, 0.8) == 40


def test_tube_counts_per_frame_and_random_counts_per_clip():
    mask = tube_mask(4, 8, 196, 0.9)
    assert ((~mask).view(4, 8, 196).sum(-1) == 196 - int(196 * 0.9)).all()
    # random: as the official RandomMaskingGenerator, int(N * ratio) masked anywhere in the clip
    mask = random_mask(64, 8, 196, 0.9)
    assert ((~mask).sum(-1) == 1568 - int(1568 * 0.9)).all()
    per_frame = (~mask).view(64, 8, 196).sum(-1)
    assert per_frame.min() < per_frame.max()  # not the same in every frame
    assert visible_count("random", 0.9, 8, 196) == 157 and visible_count("attention", 0.8, 8, 196) == 320


def test_tube_mask_repeats_over_time():
    mask = tube_mask(2, 8, 196, 0.75).view(2, 8, 196)
    assert (mask == mask[:, :1]).all()


def test_semantic_mask_never_shows_zero_attention_tokens():
    attn = torch.zeros(2, 4, 16)
    attn[..., :5] = torch.rand(2, 4, 5) + 0.1  # only 5 tokens have attention, 4 are kept
    mask = semantic_mask(attn, 0.75).view(2, 4, 16)
    assert (~mask[..., 5:]).sum() == 0


def test_semantic_sampling_matches_official_multinomial():
    """Gumbel-top-k draws the same distribution as the official torch.multinomial(attn, N)
    without replacement: per-token visibility frequencies agree over many draws."""
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(1, 1, 20, generator=g) ** 3
    attn = attn / attn.sum()
    n_vis, draws = num_visible(20, 0.8), 20000
    ours = (~semantic_mask(attn.expand(draws, 1, 20), 0.8,
                           generator=torch.Generator().manual_seed(1))).float().mean(0)
    torch.manual_seed(2)
    official = torch.zeros(20)
    picks = torch.multinomial(attn[0].expand(draws, 20), 20, replacement=False)[:, :n_vis]
    official.scatter_add_(0, picks.flatten(), torch.ones(picks.numel()))
    official /= draws
    assert ours.sum().item() == pytest.approx(n_vis)
    assert (ours - official).abs().max() < 0.02  # 3 sigma of the sampling noise is ~0.01
    # and more attention means visible more often
    order = attn.flatten().argsort()
    assert ours[order[-1]] > ours[order[0]] + 0.2


def test_shared_noise_gives_identical_masks():
    attn = torch.rand(4, 2, 16)
    noise = torch.rand(4, 2, 16)
    full = semantic_mask(attn, 0.5, uniform=noise)
    half = semantic_mask(attn[2:], 0.5, uniform=noise[2:])
    assert torch.equal(full[2:], half)


def test_make_mask_dispatch_and_errors():
    attn = torch.rand(2, 4, 16)
    for kind in ("attention", "tube", "random"):
        assert make_mask(kind, 0.5, attn).shape == (2, 64)
    with pytest.raises(ValueError, match="unknown mask type"):
        make_mask("block", 0.5, attn)
    with pytest.raises(ValueError, match="mask ratio"):
        semantic_mask(attn, 1.0)
