#!/usr/bin/env python
"""Generate the frozen reference outputs of the official Unmasked Teacher code.

The files written here (``tests/reference/<case>.pt``) are consumed by
``tests/test_reference_equivalence.py``, which checks our re-implementation in
``umt.models`` against them.  The official code is *not* a dependency of this
project: this script imports it from a directory given on the command line and
is only needed to regenerate the files.

Regenerate (from the repository root, CPU only, ~1 min)::

    # 1. extract the official model code (snapshot of OpenGVLab/unmasked_teacher)
    mkdir -p /tmp/umt_official
    git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo archive HEAD single_modality/models \\
        | tar -x -C /tmp/umt_official
    git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo rev-parse HEAD
    # -> 4fb4049f5a87919882e68ccc427615ae7dab1c33  (the commit the committed files came from)

    # 2. run the generator
    .venv/bin/python tests/reference/make_reference.py --official /tmp/umt_official \\
        --commit "$(git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo rev-parse HEAD)"

(``--official`` may point at the extraction root, at ``.../single_modality`` or
at ``.../single_modality/models``.)  Any clone of
https://github.com/OpenGVLab/unmasked_teacher at that commit works the same.

Every case builds the official module in fp32 eval mode, perturbs EVERY
parameter with Gaussian noise (LayerNorm weights/biases, q_bias/v_bias, the
head, patch-embed bias, class/positional embeddings ...) so that nothing sits at
a trivial init value, runs one forward pass on CPU and stores::

    {
      'case':        str,
      'official_commit': str | None,
      'official_files_sha256': {file name: sha256} of the three official modules,
      'versions':    {'torch': ..., 'timm': ...},
      'hparams':     plain dict of the official constructor arguments,
      'checkpoint':  the weights exactly in the official on-disk format
                     (to be torch.save'd to a file and loaded from the path),
      'input_u8':    uint8 video [B, 3, T, H, W]; the float input is
                     x = (u8 / 255 - IMAGENET_MEAN) / IMAGENET_STD  (fp32),
      ... case-specific tensors (mask, outputs) ...
    }

Cases
-----
finetune_8x224      modeling_finetune.VisionTransformer, 8 frames 224px, depth 3,
                    width 96.  Checkpoint {'module': fp16 state_dict} as DeepSpeed
                    saves it; reference outputs are computed AFTER rounding the
                    weights to fp16 (and back to fp32), so the file is consistent.
                    Outputs: 'logits' [1,5], 'tokens' [1,1568,96] (output of the
                    last block = input of the mean pooling).
finetune_16x112     same class, 16 frames 112px: the official fixed sin-cos table
                    is interpolated (bicubic 14->7 then linear 8->16) and becomes
                    an nn.Parameter ``pos_embed``.  Checkpoint {'model': fp32 sd}
                    (its ``pos_embed`` is noised like every parameter).  Extra:
                    'pos_embed_interp' (the official interpolated table, before
                    noise) and 'logits_fixed_pos'/'tokens_fixed_pos' = outputs of
                    the same weights but with pos_embed = 'pos_embed_interp'
                    (what a model using its own fixed table must produce when the
                    checkpoint has no ``pos_embed``).
pretrain_8x224      modeling_pretrain_umt.PretrainVisionTransformer (Stage-1
                    student), depth 4, width 96, 3 aligned layers, teacher dim 32.
                    'mask' bool [1,1568] (True = masked), exactly 40 visible tokens
                    per frame.  Output 'output' [3,1,320,32].
teacher_b16like     clip.VisionTransformer (the CLIP teacher), patch 16, 224px,
                    width 64, 4 layers, 4 heads, output dim 32, 3 returned layers,
                    return_attn.  Checkpoint = OpenAI *visual* state dict (as
                    extract_clip/extract.ipynb writes it, conv1 4-D), loaded with
                    the official clip.load_state_dict.  Outputs 'targets'
                    [3,1,8*196,32] and 'attn' [B*T, 196].
teacher_l14like_196 same class, patch 14, width 64, 3 layers, 2 returned layers;
                    the checkpoint's positional_embedding is for 224px (16x16+1)
                    and the official loader interpolates it to 196px (14x14+1).
                    The 224px input is resized to 196 exactly like
                    engine_for_pretraining_umt.py does.  Outputs 'targets'
                    [2,1,4*196,32], 'attn' [4,196], and
                    'positional_embedding_interp' (the loader's result).
pretrain_b2         the student of pretrain_8x224 but BATCH 2, 4 frames (encoder
                    table for 4*196 tokens) and width 64 / 2 heads (head dim 32;
                    keeps the file < 2.5 MB).  'mask' bool [2,784], a different
                    random mask per clip, 40 visible per frame.  Output
                    'output' [3,2,160,32].
teacher_b2          the teacher of teacher_b16like but BATCH 2 and 2 frames
                    (input_u8 [2,3,2,224,224]).  Outputs 'targets'
                    [3,2,2*196,32] and 'attn' [B*T, 196] = [4,196] (rows b*T+t).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import types
from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "_umt_official_models"


# --------------------------------------------------------------------------- helpers
def normalise(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,T,H,W] -> ImageNet-normalised fp32 (the test uses the same formula)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return (u8.to(torch.float32) / 255.0 - mean) / std


def _install_timm_shims() -> None:
    """The official code imports timm 0.4.12 module names.  timm 1.x keeps
    deprecation shims for them; only if one is missing we register a tiny
    module in sys.modules (the official files are never modified)."""
    try:
        import timm.models.layers as _layers  # noqa: F401
        _ = (_layers.drop_path, _layers.to_2tuple, _layers.trunc_normal_)
    except (ImportError, AttributeError):
        import timm.layers as tl

        m = types.ModuleType("timm.models.layers")
        m.drop_path, m.to_2tuple, m.trunc_normal_ = tl.drop_path, tl.to_2tuple, tl.trunc_normal_
        sys.modules["timm.models.layers"] = m
    try:
        from timm.models.registry import register_model  # noqa: F401
    except ImportError:
        m = types.ModuleType("timm.models.registry")
        m.register_model = lambda fn: fn
        sys.modules["timm.models.registry"] = m


def load_official(path: str):
    """Import modeling_finetune, modeling_pretrain_umt and clip from the official
    ``single_modality/models`` directory, without running its ``__init__``
    (which would also import modeling_pretrain and register models in timm)."""
    cands = [path, os.path.join(path, "models"), os.path.join(path, "single_modality", "models")]
    models_dir = next((c for c in cands if os.path.isfile(os.path.join(c, "modeling_finetune.py"))), None)
    if models_dir is None:
        raise SystemExit(f"modeling_finetune.py not found under {path!r}")
    _install_timm_shims()
    pkg = types.ModuleType(PKG)
    pkg.__path__ = [models_dir]
    sys.modules[PKG] = pkg
    ft = importlib.import_module(f"{PKG}.modeling_finetune")
    pt = importlib.import_module(f"{PKG}.modeling_pretrain_umt")
    clip = importlib.import_module(f"{PKG}.clip")
    return models_dir, ft, pt, clip


def official_commit(explicit: str | None) -> str | None:
    if not explicit:
        print("WARNING: --commit not given; the files will record official_commit=None", file=sys.stderr)
    return explicit


@torch.no_grad()
def randomise_(model: nn.Module, vec_std: float = 0.1, mat_std: float = 0.03) -> None:
    """Add N(0, std) noise to every parameter: 1-D ones (LayerNorm weight/bias,
    biases, q_bias/v_bias, class embedding) get vec_std, the rest mat_std."""
    for _, p in model.named_parameters():
        std = vec_std if p.ndim == 1 else mat_std
        p.add_(torch.randn_like(p) * std)


@torch.no_grad()
def sharpen_attention_(model: nn.Module, factor: float) -> None:
    """Scale the query and key projection weights of every attention layer by
    ``factor`` (attention logits by factor**2).  With small random weights the
    softmax is almost uniform, which would make a wrong scale, head split or
    attention average nearly invisible in the outputs."""
    for m in model.modules():
        if hasattr(m, "qkv") and isinstance(m.qkv, nn.Linear):  # official timm-style Attention
            d = m.qkv.weight.shape[0] // 3
            m.qkv.weight[: 2 * d].mul_(factor)
            if getattr(m, "q_bias", None) is not None:
                m.q_bias.mul_(factor)
        elif isinstance(m, nn.MultiheadAttention):  # CLIP teacher
            d = m.embed_dim
            m.in_proj_weight[: 2 * d].mul_(factor)
            m.in_proj_bias[: 2 * d].mul_(factor)


def clone_sd(sd, dtype=None):
    return OrderedDict((k, (v.detach().clone() if dtype is None else v.detach().to(dtype).clone())) for k, v in sd.items())


def video_u8(shape) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8)


def meta(case, hparams, ctx):
    import timm

    return {
        "case": case,
        "official_commit": ctx["commit"],
        "official_files_sha256": ctx["sha256"],
        "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)},
        "hparams": hparams,
    }


def save(case, obj, out_dir):
    # never store views: torch.save writes the whole underlying storage
    obj = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    path = os.path.join(out_dir, f"{case}.pt")
    torch.save(obj, path)
    print(f"[{case}] wrote {path}: {os.path.getsize(path) / 1e6:.3f} MB")
    return os.path.getsize(path)


def stats(name, t):
    t = t.float()
    print(f"    {name:28s} {tuple(t.shape)} mean={t.mean():+.4f} std={t.std():.4f} min={t.min():+.4f} max={t.max():+.4f}")


# --------------------------------------------------------------------------- cases
def verify_reload(case, build, ckpt, key, run, expected):
    """Load the checkpoint as saved (official wrapper key, on-disk dtype) into a
    freshly built official model and check that it reproduces the outputs bit for bit."""
    model = build()
    model.load_state_dict(ckpt[key], strict=True)  # copy_ casts fp16 -> fp32
    model.eval()
    got = run(model)
    for name, g, e in zip(expected, got, expected.values()):
        assert torch.equal(g, e), f"{case}: {name} not reproduced from the saved checkpoint"
    print(f"    reload check ok ({', '.join(expected)})")


def finetune_hparams(img_size, num_frames):
    return dict(
        img_size=img_size, patch_size=16, in_chans=3, embed_dim=96, depth=3, num_heads=3,
        mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6, all_frames=num_frames, tubelet_size=1,
        num_classes=5, use_mean_pooling=True, init_scale=0.001, init_values=0.0,
        use_learnable_pos_emb=False, drop_path_rate=0.0,
    )


def build_finetune(ft, hp):
    kw = {k: v for k, v in hp.items() if k != "norm_eps"}
    return ft.VisionTransformer(norm_layer=partial(nn.LayerNorm, eps=hp["norm_eps"]), **kw).eval()


def run_finetune(model, x):
    captured = {}
    h = model.blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
    h.remove()
    return logits, captured["tokens"]


def case_finetune_8x224(ctx):
    ft = ctx["ft"]
    torch.manual_seed(1001)
    hp = finetune_hparams(224, 8)
    model = build_finetune(ft, hp)
    assert not isinstance(model.pos_embed, nn.Parameter)  # fixed 1568-row table, not saved
    randomise_(model)
    sharpen_attention_(model, 4.0)
    sd16 = clone_sd(model.state_dict(), torch.float16)  # DeepSpeed fp16 'module'
    model.load_state_dict(OrderedDict((k, v.float()) for k, v in sd16.items()), strict=True)
    model.eval()
    u8 = video_u8((1, 3, 8, 224, 224))
    logits, tokens = run_finetune(model, normalise(u8))
    stats("logits", logits); stats("tokens", tokens)
    assert logits.shape == (1, 5) and tokens.shape == (1, 1568, 96)
    verify_reload("finetune_8x224", lambda: build_finetune(ft, hp), {"module": sd16}, "module",
                  lambda m: run_finetune(m, normalise(u8)), {"logits": logits, "tokens": tokens})
    obj = meta("finetune_8x224", hp, ctx)
    obj.update(checkpoint={"module": sd16}, input_u8=u8, logits=logits, tokens=tokens)
    return save("finetune_8x224", obj, ctx["out"])


def case_finetune_16x112(ctx):
    ft = ctx["ft"]
    torch.manual_seed(1002)
    hp = finetune_hparams(112, 16)
    model = build_finetune(ft, hp)
    assert isinstance(model.pos_embed, nn.Parameter) and model.pos_embed.shape == (1, 784, 96)
    pos_interp = model.pos_embed.detach().clone()
    randomise_(model)
    sharpen_attention_(model, 4.0)
    with torch.no_grad():  # make the checkpoint's pos_embed parameter clearly differ from the fixed table
        model.pos_embed.add_(0.3 * torch.randn_like(model.pos_embed))
    sd = clone_sd(model.state_dict())
    assert "pos_embed" in sd
    u8 = video_u8((1, 3, 16, 112, 112))
    x = normalise(u8)
    logits, tokens = run_finetune(model, x)
    # same weights, but the official interpolated fixed table instead of the noised checkpoint pos_embed
    with torch.no_grad():
        model.pos_embed.copy_(pos_interp)
    logits_fp, tokens_fp = run_finetune(model, x)
    stats("logits", logits); stats("tokens", tokens); stats("pos_embed_interp", pos_interp)
    stats("logits_fixed_pos", logits_fp)
    verify_reload("finetune_16x112", lambda: build_finetune(ft, hp), {"model": sd}, "model",
                  lambda m: run_finetune(m, x), {"logits": logits, "tokens": tokens})
    obj = meta("finetune_16x112", hp, ctx)
    obj.update(
        checkpoint={"model": sd}, input_u8=u8, logits=logits, tokens=tokens,
        pos_embed_interp=pos_interp, logits_fixed_pos=logits_fp, tokens_fixed_pos=tokens_fp,
    )
    return save("finetune_16x112", obj, ctx["out"])


def pretrain_case(ctx, case, seed, T, B, width, heads):
    pt = ctx["pt"]
    torch.manual_seed(seed)
    hp = dict(
        img_size=224, patch_size=16, encoder_in_chans=3, encoder_num_classes=0, encoder_embed_dim=width,
        encoder_depth=4, encoder_num_heads=heads, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6,
        init_values=0.0, use_learnable_pos_emb=False, num_frames=T, tubelet_size=1,
        clip_decoder_embed_dim=width, clip_output_dim=32, clip_norm_type="l2", clip_return_layer=3,
        clip_student_return_interval=1, drop_path_rate=0.0,
    )
    kw = {k: v for k, v in hp.items() if k != "norm_eps"}
    build = lambda: pt.PretrainVisionTransformer(norm_layer=partial(nn.LayerNorm, eps=hp["norm_eps"]), **kw).eval()
    model = build()
    assert model.encoder.pos_embed.shape == (1, T * 196, width)  # the encoder's own 1-D table, no interpolation
    randomise_(model)
    sharpen_attention_(model, 4.0)
    sd = clone_sd(model.state_dict())
    HW, n_vis = 196, 40
    mask = torch.ones(B, T, HW, dtype=torch.bool)
    for b in range(B):  # an independent random mask per clip
        for t in range(T):
            mask[b, t, torch.randperm(HW)[:n_vis]] = False
    mask = mask.flatten(1)  # [B, T*196], token index = t*196 + h*14 + w, True = masked
    assert int((~mask).sum()) == B * T * n_vis
    assert all(not torch.equal(mask[0], mask[b]) for b in range(1, B))
    u8 = video_u8((B, 3, T, 224, 224))
    with torch.no_grad():
        out = model(normalise(u8), mask)
    stats("output", out)
    assert out.shape == (3, B, T * n_vis, 32)

    def run(m):
        with torch.no_grad():
            return (m(normalise(u8), mask),)

    verify_reload(case, build, {"model": sd}, "model", run, {"output": out})
    obj = meta(case, hp, ctx)
    obj.update(checkpoint={"model": sd}, input_u8=u8, mask=mask, output=out,
               student_return_index=list(model.encoder.return_index))
    return save(case, obj, ctx["out"])


def case_pretrain_8x224(ctx):
    return pretrain_case(ctx, "pretrain_8x224", 1003, T=8, B=1, width=96, heads=3)


def case_pretrain_b2(ctx):
    # width 64 / 2 heads (head dim 32 as in pretrain_8x224) keeps the file under 2.5 MB
    return pretrain_case(ctx, "pretrain_b2", 1006, T=4, B=2, width=64, heads=2)


def openai_visual_sd(model) -> "OrderedDict[str, torch.Tensor]":
    """The official teacher's weights in OpenAI CLIP *visual* format (what
    extract_clip/extract.ipynb saves: clip.load(...,'cpu') -> fp32, 'visual.'
    prefix stripped, conv1 a 4-D Conv2d weight)."""
    sd = clone_sd(model.state_dict())
    w = sd["conv1.weight"]
    assert w.ndim == 5 and w.shape[2] == 1
    sd["conv1.weight"] = w[:, :, 0].contiguous()
    return sd


def teacher_case(ctx, case, seed, patch, src_res, res, width, layers, heads, out_dim, k, T, B=1):
    clip = ctx["clip"]
    torch.manual_seed(seed)
    hp = dict(
        input_resolution=res, patch_size=patch, width=width, layers=layers, heads=heads,
        output_dim=out_dim, clip_norm_type="l2", kernel_size=1, return_attn=True,
        clip_return_layer=k, clip_return_interval=1, center=True,
        checkpoint_resolution=src_res, student_resolution=224, num_frames=T,
    )
    cargs = dict(patch_size=patch, width=width, layers=layers, heads=heads, output_dim=out_dim,
                 clip_norm_type="l2", kernel_size=1, return_attn=True, clip_return_layer=k,
                 clip_return_interval=1)
    src = clip.VisionTransformer(input_resolution=src_res, **cargs).eval()
    # larger weights than at init so 'attn' is far from uniform and a meaningful check
    randomise_(src, vec_std=0.1, mat_std=0.05)
    sharpen_attention_(src, 2.0)
    ckpt = openai_visual_sd(src)
    assert ckpt["positional_embedding"].shape[0] == (src_res // patch) ** 2 + 1
    # the official path: fresh model at the teacher resolution + official loader
    model = clip.VisionTransformer(input_resolution=res, **cargs)
    clip.load_state_dict(model, OrderedDict(ckpt), input_resolution=res, patch_size=patch, center=True)
    model.eval()
    u8 = video_u8((B, 3, T, 224, 224))
    videos = normalise(u8)
    B, C, _, H, W = videos.shape
    if H != res:  # engine_for_pretraining_umt.train_one_epoch, verbatim
        clip_videos = F.interpolate(videos.view(B, C * T, H, W), size=(res, res), mode="bicubic", align_corners=False)
        clip_videos = clip_videos.view(B, C, T, res, res)
    else:
        clip_videos = videos
    with torch.no_grad():
        targets, attn = model(clip_videos)
    stats("targets", targets); stats("attn", attn)
    g = res // patch
    assert targets.shape == (k, B, T * g * g, out_dim) and attn.shape == (B * T, g * g)
    obj = meta(case, hp, ctx)
    obj.update(checkpoint=ckpt, input_u8=u8, targets=targets.clone(), attn=attn.clone(),  # attn is a view
               teacher_return_index=list(model.transformer.return_index),
               positional_embedding_interp=model.positional_embedding.detach().clone())
    return save(case, obj, ctx["out"])


def case_teacher_b16like(ctx):
    return teacher_case(ctx, "teacher_b16like", 1004, patch=16, src_res=224, res=224,
                        width=64, layers=4, heads=4, out_dim=32, k=3, T=8)


def case_teacher_l14like_196(ctx):
    return teacher_case(ctx, "teacher_l14like_196", 1005, patch=14, src_res=224, res=196,
                        width=64, layers=3, heads=4, out_dim=32, k=2, T=4)


def case_teacher_b2(ctx):
    return teacher_case(ctx, "teacher_b2", 1007, patch=16, src_res=224, res=224,
                        width=64, layers=4, heads=4, out_dim=32, k=3, T=2, B=2)


CASES = OrderedDict(
    finetune_8x224=case_finetune_8x224,
    finetune_16x112=case_finetune_16x112,
    pretrain_8x224=case_pretrain_8x224,
    teacher_b16like=case_teacher_b16like,
    teacher_l14like_196=case_teacher_l14like_196,
    pretrain_b2=case_pretrain_b2,
    teacher_b2=case_teacher_b2,
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True,
                    help="directory holding the official single_modality/models (see module docstring)")
    ap.add_argument("--out", default=HERE, help="output directory (default: next to this script)")
    ap.add_argument("--commit", default=None, help="official commit hash to record in the files (git --git-dir=... rev-parse HEAD)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    models_dir, ft, pt, clip = load_official(args.official)
    sha = {}
    for f in ("modeling_finetune.py", "modeling_pretrain_umt.py", "clip.py"):
        with open(os.path.join(models_dir, f), "rb") as fh:
            sha[f] = hashlib.sha256(fh.read()).hexdigest()
    ctx = dict(ft=ft, pt=pt, clip=clip, out=args.out, commit=official_commit(args.commit), sha256=sha)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name in args.cases:
        print(f"== {name}")
        total += CASES[name](ctx)
    print(f"total: {total / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
