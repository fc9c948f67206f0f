"""Numerical equivalence of ``umt.models`` with the official Unmasked Teacher code.

The reference files in ``tests/reference/*.pt`` were produced by
``tests/reference/make_reference.py`` from the official OpenGVLab/unmasked_teacher
modules (commit recorded in each file as ``official_commit``; how to regenerate:
``tests/reference/README.md``).  The official code is not needed to run this test.

Every test
  * writes the stored checkpoint, in the official on-disk format, to ``tmp_path``
    and loads it through OUR public loading path (``create_model(pretrained=...)``
    or ``CLIPTeacher(pretrained=...)``),
  * feeds the stored uint8 clip normalised as
    ``x = (u8 / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)`` in fp32,
  * runs our model in fp32 eval mode on CPU under ``torch.no_grad()``,
  * requires ``max |ours - official| <= 1e-4`` (ATOL) for every compared tensor,
    after checking the shapes are identical.

What is compared (see each test's docstring for details):
  finetune_8x224      logits [1,5] and forward_features tokens [1,1568,96];
                      checkpoint {'module': fp16 state_dict} (DeepSpeed style).
  finetune_16x112     logits [1,5] and tokens [1,784,96] with the checkpoint's
                      ``pos_embed`` parameter; our own fixed table for 16x112 vs
                      the official interpolated one; logits/tokens when the
                      checkpoint has no ``pos_embed``.
  pretrain_8x224      Stage-1 student output [3,1,320,32] for a given mask.
  pretrain_b2         the student (width 64, 4 frames) on a batch of 2 clips with
                      a different mask each: output [3,2,160,32].
  teacher_b16like     CLIP teacher targets [3,1,1568,32] and last-layer CLS
                      attention [1,8,196] (official layout [B*T, HW]).
  teacher_l14like_196 teacher with a 224px checkpoint run at 196px (pos-embed
                      interpolation + input resize): targets [2,1,784,32],
                      attention [1,4,196].
  teacher_b2          the teacher_b16like architecture on a batch of 2 clips of
                      2 frames: targets [3,2,392,32], attention [2,2,196]
                      (official [B*T, HW], rows b*T + t).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REF_DIR = Path(__file__).resolve().parent / "reference"
ATOL = 1e-4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- helpers
def _load(case: str) -> dict:
    path = REF_DIR / f"{case}.pt"
    if not path.is_file():
        pytest.fail(f"missing reference file {path}; see tests/reference/README.md")
    return torch.load(path, map_location="cpu", weights_only=True)


def _normalise(u8: torch.Tensor) -> torch.Tensor:
    assert u8.dtype == torch.uint8
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return (u8.to(torch.float32) / 255.0 - mean) / std


def _assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, atol: float = ATOL) -> float:
    assert isinstance(got, torch.Tensor), f"{name}: expected a tensor, got {type(got)}"
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: shape {tuple(got.shape)} != official {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    diff = (got.detach().to(torch.float32) - ref.to(torch.float32)).abs().max().item()
    assert diff <= atol, f"{name}: max abs diff {diff:.3e} > {atol:.0e} (official max |x| = {ref.abs().max().item():.3e})"
    return diff


def _save(obj, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def _models():
    # Imported lazily so a missing/broken umt.models shows up as test failures,
    # not as a collection error of the whole suite.
    import umt.models as m

    return m


def _backbone(ref: dict, pretrained: str | None):
    hp = ref["hparams"]
    assert hp["patch_size"] == 16 and hp["mlp_ratio"] == 4.0 and hp["qkv_bias"] and hp["use_mean_pooling"]
    model = _models().create_model(
        "umt_vit_tiny_patch16_224",
        pretrained=pretrained,
        num_frames=hp["all_frames"],
        img_size=hp["img_size"],
        num_classes=hp["num_classes"],
        drop_path_rate=0.0,
        tubelet_size=hp["tubelet_size"],
        embed_dim=hp["embed_dim"],
        depth=hp["depth"],
        num_heads=hp["num_heads"],
    )
    return model.float().eval()


def _run_backbone(model, x):
    with torch.no_grad():
        return model(x), model.forward_features(x)


def _fixed_pos_table(model, n_tokens: int, dim: int) -> torch.Tensor:
    """Our backbone's position table: ``model.pos_embed`` (parameter, buffer or
    plain tensor attribute), else the unique buffer/attribute whose name
    contains 'pos' with N*D elements."""
    cands = []
    t = getattr(model, "pos_embed", None)
    if isinstance(t, torch.Tensor):
        cands.append(("pos_embed", t))
    else:
        for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
            if "pos" in name and buf.numel() == n_tokens * dim:
                cands.append((name, buf))
    assert len(cands) == 1, f"cannot identify the position table among {[c[0] for c in cands]}"
    return cands[0][1].detach().reshape(1, n_tokens, dim)


# --------------------------------------------------------------------------- backbone
def test_finetune_8x224_fp16_module_checkpoint(tmp_path):
    """8 frames, 224px, depth 3, width 96, 5 classes.  The checkpoint is a
    DeepSpeed-style ``{'module': state_dict}`` in fp16 without ``pos_embed`` (the
    official model keeps its fixed sin-cos table outside the state dict).  The
    official outputs were computed with the fp16-rounded weights in fp32.
    Compares logits [1,5] and forward_features tokens [1,1568,96] (the last
    block's output, before mean pooling / fc_norm)."""
    ref = _load("finetune_8x224")
    assert all(v.dtype == torch.float16 for v in ref["checkpoint"]["module"].values())
    model = _backbone(ref, _save(ref["checkpoint"], tmp_path / "ckpt_fp16.pth"))
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights must be fp32 after loading"
    logits, tokens = _run_backbone(model, _normalise(ref["input_u8"]))
    _assert_close("tokens", tokens, ref["tokens"])
    _assert_close("logits", logits, ref["logits"])


def test_finetune_16x112_checkpoint_pos_embed(tmp_path):
    """16 frames, 112px.  The checkpoint ``{'model': fp32 sd}`` contains a
    ``pos_embed`` parameter [1,784,96] (noised, i.e. different from any fixed
    table): ours must use it.  Compares logits [1,5] and tokens [1,784,96]."""
    ref = _load("finetune_16x112")
    assert "pos_embed" in ref["checkpoint"]["model"]
    model = _backbone(ref, _save(ref["checkpoint"], tmp_path / "ckpt.pth"))
    logits, tokens = _run_backbone(model, _normalise(ref["input_u8"]))
    _assert_close("tokens", tokens, ref["tokens"])
    _assert_close("logits", logits, ref["logits"])


def test_finetune_16x112_fixed_pos_table_matches_official_interpolation():
    """Without a checkpoint, our fixed position table for 16 frames x 112px must
    equal the official one: the 8x14x14 sin-cos table (1568 rows), bicubically
    resized 14->7 per frame, then linearly resized 8->16 frames."""
    ref = _load("finetune_16x112")
    model = _backbone(ref, None)
    ours = _fixed_pos_table(model, 784, ref["hparams"]["embed_dim"])
    _assert_close("pos_embed", ours, ref["pos_embed_interp"])


def test_finetune_16x112_checkpoint_without_pos_embed(tmp_path):
    """Same weights with ``pos_embed`` removed from the checkpoint: ours must fall
    back to its fixed (interpolated) table and reproduce the official outputs
    computed with pos_embed = the official interpolated table."""
    ref = _load("finetune_16x112")
    sd = dict(ref["checkpoint"]["model"])
    del sd["pos_embed"]
    model = _backbone(ref, _save({"model": sd}, tmp_path / "ckpt_nopos.pth"))
    logits, tokens = _run_backbone(model, _normalise(ref["input_u8"]))
    _assert_close("tokens_fixed_pos", tokens, ref["tokens_fixed_pos"])
    _assert_close("logits_fixed_pos", logits, ref["logits_fixed_pos"])


# --------------------------------------------------------------------------- Stage-1 student
def _check_pretrain(ref: dict, tmp_path):
    hp = ref["hparams"]
    model = _models().create_model(
        "umt_pretrain_vit_tiny_patch16_224",
        pretrained=_save(ref["checkpoint"], tmp_path / "ckpt.pth"),
        num_frames=hp["num_frames"],
        img_size=hp["img_size"],
        tubelet_size=hp["tubelet_size"],
        drop_path_rate=0.0,
        embed_dim=hp["encoder_embed_dim"],
        depth=hp["encoder_depth"],
        num_heads=hp["encoder_num_heads"],
        teacher_dim=hp["clip_output_dim"],
        align_layers=hp["clip_return_layer"],
    ).float().eval()
    with torch.no_grad():
        out = model(_normalise(ref["input_u8"]), ref["mask"])
    _assert_close("student output", out, ref["output"])


def test_pretrain_student_8x224(tmp_path):
    """Stage-1 student (official PretrainVisionTransformer): encoder depth 4,
    width 96, 3 aligned layers (the last three blocks, returned in ascending
    block order, each through the shared final encoder norm, + the clip
    sin-cos pos-embed of the visible tokens, then per-layer Linear -> LayerNorm
    -> L2 normalise), teacher dim 32.  Checkpoint ``{'model': sd}`` with
    ``encoder.*`` / ``clip_decoder.*`` keys.  The mask [1,1568] (True = masked)
    keeps exactly 40 tokens per frame.  Compares the output [3,1,320,32]."""
    _check_pretrain(_load("pretrain_8x224"), tmp_path)


def test_pretrain_student_batch2(tmp_path):
    """Same student with batch 2 and 4 frames (encoder width 64, 2 heads, depth
    4; its fixed pos-table is the plain 1-D table for 4*196 tokens).  Each clip
    has its own random mask [2,784] with exactly 40 visible tokens per frame,
    so the per-clip gathering of the visible tokens (and of their clip
    pos-embed) is checked.  Compares the output [3,2,160,32]."""
    ref = _load("pretrain_b2")
    assert ref["mask"].shape == (2, 784) and not torch.equal(ref["mask"][0], ref["mask"][1])
    _check_pretrain(ref, tmp_path)


# --------------------------------------------------------------------------- CLIP teacher
def _teacher(ref: dict, path: str, model_name: str):
    hp = ref["hparams"]
    return _models().CLIPTeacher(
        model_name=model_name,
        pretrained=path,
        return_layers=hp["clip_return_layer"],
        input_resolution=hp["input_resolution"],
        vision_cfg={
            "width": hp["width"],
            "layers": hp["layers"],
            "heads": hp["heads"],
            "patch_size": hp["patch_size"],
            "image_size": hp["checkpoint_resolution"],
        },
        embed_dim=hp["output_dim"],
    ).float().eval()


def _check_teacher(ref: dict, teacher):
    hp = ref["hparams"]
    x = _normalise(ref["input_u8"])  # student resolution (224); the teacher resizes itself
    B, _, T = x.shape[:3]
    with torch.no_grad():
        targets, attn = teacher(x)
    _assert_close("targets", targets, ref["targets"])
    hw = (hp["input_resolution"] // hp["patch_size"]) ** 2
    assert tuple(attn.shape) == (B, T, hw), f"attn shape {tuple(attn.shape)} != {(B, T, hw)}"
    # official layout: [B*T, HW], rows ordered b-major (b*T + t)
    _assert_close("attn", attn.reshape(B * T, hw), ref["attn"])


def test_teacher_b16like(tmp_path):
    """Official clip.VisionTransformer, patch 16, 224px, width 64, 4 layers,
    4 heads, output dim 32, returning the last 3 layers (ascending order) and
    the last layer's CLS->patch attention averaged over heads.  The checkpoint
    is an OpenAI-format *visual* state dict (conv1 4-D).  Compares targets
    [3,1,8*196,32] (ln_post -> proj -> L2 normalise) and attention [1,8,196]."""
    ref = _load("teacher_b16like")
    assert ref["checkpoint"]["conv1.weight"].ndim == 4
    path = _save(ref["checkpoint"], tmp_path / "vit_b16_visual.pth")
    _check_teacher(ref, _teacher(ref, path, "ViT-B-16"))


def test_teacher_l14like_196(tmp_path):
    """Patch-14 teacher whose checkpoint has a 224px positional embedding
    (16x16+1 rows) run at input_resolution 196: the table is bicubically
    resized to 14x14 (+cls) and the normalised 224px input is bicubically
    resized to 196 (align_corners=False, over the B x (C*T) planes) as the
    official training engine does.  Compares targets [2,1,4*196,32] and
    attention [1,4,196]."""
    ref = _load("teacher_l14like_196")
    assert ref["checkpoint"]["positional_embedding"].shape[0] == 16 * 16 + 1
    path = _save(ref["checkpoint"], tmp_path / "vit_l14_visual.pth")
    _check_teacher(ref, _teacher(ref, path, "ViT-L-14"))


def test_teacher_batch2(tmp_path):
    """The teacher of ``teacher_b16like`` (patch 16, 224px, width 64, 4 layers,
    3 returned layers) on a batch of 2 clips of 2 frames: checks the official
    frame order ``b*T + t`` of the per-frame teacher and the regrouping of its
    tokens per clip.  Compares targets [3,2,2*196,32] and attention [2,2,196]
    (official layout [B*T, HW] = [4,196])."""
    ref = _load("teacher_b2")
    assert tuple(ref["input_u8"].shape) == (2, 3, 2, 224, 224)
    path = _save(ref["checkpoint"], tmp_path / "vit_b16_visual.pth")
    _check_teacher(ref, _teacher(ref, path, "ViT-B-16"))
