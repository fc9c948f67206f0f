"""Model FLOPs of the Stage-1 and Stage-2 training steps and model FLOPs utilisation (MFU).

The count is the usual one (nanoGPT, PaLM appendix B): a matrix multiply with ``P`` weights
costs ``2 P`` FLOPs per token forward and ``4 P`` backward, plus the attention products
(``q k^T`` and ``attn v``: ``4 n^2 d`` per layer forward, three times that with backward).
For UMT that is

    Stage 1, per clip:  2 x teacher params x teacher tokens      (frozen: forward only)
                      + 6 x student params x visible tokens       (forward + backward)
                      + attention FLOPs of both

Two refinements make it match what runs (``tests/test_flops.py`` checks it against
``torch.utils.flop_counter``): the student's patch embedding runs on *all* tokens (forward +
weight gradient, no input gradient: ``4 P_patch N``), and the teacher's ``proj`` runs on the
patch tokens of each of its K returned layers. Recomputation (activation checkpointing) and
the teacher's extra class-token attention are *not* counted: MFU measures the model's work.
Element-wise work (norms, GELU, softmax, the optimizer) is not counted either.

``mfu = achieved FLOP/s / peak``: ``peak_tflops(device)`` is the dense bf16 tensor-core peak
of the GPU from its data sheet (``PEAK_BF16_TFLOPS``), None on CPUs and unknown devices.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets. Matched
# against torch.cuda.get_device_name() in this order (first substring hit wins).
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GB200", 2500.0), ("B200", 2250.0), ("B100", 1750.0),
    ("H200", 989.0), ("GH200", 989.0), ("H800", 989.0),
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("A800", 312.0), ("A100", 312.0), ("A30", 165.0), ("A10G", 70.0), ("A10", 125.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("RTX 6000 Ada", 364.0), ("RTX A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 (V100 has no bf16); listed so MFU is not silently missing
    ("T4", 65.0),     # fp16, as V100
]


def peak_tflops_of(name: str) -> Optional[float]:
    """Dense bf16 peak in TFLOP/s of a GPU named ``name`` (``torch.cuda.get_device_name``)."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def peak_tflops(device: torch.device | str) -> Optional[float]:
    """Dense bf16 peak of ``device`` in TFLOP/s, or None (CPU, unknown GPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_tflops_of(torch.cuda.get_device_name(device))


def count_params(module: Optional[nn.Module]) -> int:
    """Parameters of ``module`` (shared ones once; buffers such as position tables excluded)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def attention_flops(tokens: int, width: int, layers: int, keys: Optional[int] = None) -> float:
    """Forward FLOPs of ``q k^T`` and ``attn v`` over ``layers`` layers, one sequence of
    ``tokens`` queries attending to ``keys`` (default: the same) keys, ``width`` = heads x d_head."""
    keys = tokens if keys is None else keys
    return 4.0 * tokens * keys * width * layers


def teacher_flops(teacher: nn.Module, frames: int) -> float:
    """Forward FLOPs of the CLIP teacher on one clip of ``frames`` frames (each frame an image
    with its class token; ``proj`` on the patches of each returned layer). ``teacher``: a
    ``umt.models.CLIPTeacher``."""
    hw = teacher.grid * teacher.grid
    width = teacher.visual.transformer.width
    layers = len(teacher.blocks)
    proj = teacher.visual.proj.numel()
    per_frame = (2.0 * (count_params(teacher) - proj) * (1 + hw)
                 + 2.0 * proj * hw * teacher.return_layers
                 + attention_flops(1 + hw, width, layers))
    return frames * per_frame


def _vit_shape(student: nn.Module) -> tuple[int, int, int]:
    """(width, depth, all tokens) of a ``PretrainVisionTransformer``."""
    enc = student.encoder
    return enc.embed_dim, len(enc.blocks), enc.patch_embed.num_patches


def student_train_flops(student: nn.Module, visible: int, tokens: Optional[int] = None,
                        exclude: int = 0) -> float:
    """Forward + backward FLOPs of a ``PretrainVisionTransformer`` on ``visible`` tokens of a
    clip of ``tokens`` tokens (default: the model's grid): ``6 P n_vis + 3 x attention``, the
    patch embedding ``4 P_patch N`` (all tokens; no input gradient). ``exclude``: parameters
    that do not run (e.g. unused alignment heads)."""
    width, depth, n_all = _vit_shape(student)
    n_all = n_all if tokens is None else tokens
    patch = count_params(student.encoder.patch_embed)
    rest = count_params(student) - patch - exclude
    return 6.0 * rest * visible + 4.0 * patch * n_all + 3.0 * attention_flops(visible, width, depth)


def stage1_flops_per_clip(student: nn.Module, teacher: Optional[nn.Module], frames: int,
                          visible: int, tokens: Optional[int] = None) -> float:
    """Model FLOPs of one Stage-1 training sample: the teacher's forward on the whole clip of
    ``frames`` frames and the student's (``PretrainVisionTransformer``) forward + backward on
    ``visible`` of its ``tokens`` tokens (default: the student's grid)."""
    flops = student_train_flops(student, visible, tokens)
    if teacher is not None:
        flops += teacher_flops(teacher, frames)
    return flops


def stage2_flops_per_sample(model: nn.Module, teacher: Optional[nn.Module], frames: int,
                            visible: int, text_len: int, vtm: bool = True, mlm: bool = True,
                            mlm_prob: float = 0.5, uta: bool = True) -> float:
    """Model FLOPs of one Stage-2 training sample (a caption with its clip or image).

    ``model``: a ``umt.models.VisionLanguageModel``; ``frames``: 1 for images; ``visible``:
    visible tokens of the sample; ``text_len``: padded caption length. Counted: the teacher
    (when it runs), the video encoder on the visible tokens (with its alignment heads when
    ``uta``), the text-only layers on the caption (and again on the MLM-masked caption), the
    fusion layers on the three VTM pairs and the MLM caption (self-attention + FFN on the
    text, cross-attention keys/values on the visible tokens), and the MLM head on
    ``mlm_prob x text_len`` positions.
    """
    ve = model.vision_encoder
    hw = ve.encoder.patch_embed.grid[1] * ve.encoder.patch_embed.grid[2]
    flops = student_train_flops(ve, visible, frames * hw,
                                exclude=0 if uta else count_params(ve.clip_decoder))
    if teacher is not None:
        flops += teacher_flops(teacher, frames)

    text = model.text_encoder
    w, fusion = text.width, text.fusion_layer
    layers = text.bert.encoder.layer
    text_only = sum(count_params(layer) for layer in layers[:fusion])
    n_text = 1 + int(mlm)
    flops += n_text * (6.0 * text_only * text_len + 3.0 * attention_flops(text_len, w, fusion))

    pairs = 3 * int(vtm) + int(mlm)
    if pairs:
        kv = sum(count_params(layer.crossattention.self.key) + count_params(layer.crossattention.self.value)
                 for layer in layers[fusion:])
        rest = sum(count_params(layer) for layer in layers[fusion:]) - kv
        n_fusion = len(layers) - fusion
        per_pair = (6.0 * rest * text_len + 6.0 * kv * visible
                    + 3.0 * attention_flops(text_len, w, n_fusion)
                    + 3.0 * attention_flops(text_len, w, n_fusion, keys=visible))
        flops += pairs * per_pair
    if mlm:
        pred = text.cls.predictions
        head = count_params(pred.transform) + pred.decoder.weight.numel()
        flops += 6.0 * head * mlm_prob * text_len
    return flops


def throughput(flops: float, seconds: float, device: torch.device | str) -> dict[str, Optional[float]]:
    """``{'tflops': achieved TFLOP/s, 'mfu': fraction of the device's bf16 peak or None}``
    for ``flops`` model FLOPs done in ``seconds`` on one device."""
    if seconds <= 0:
        return {"tflops": None, "mfu": None}
    tflops = flops / seconds / 1e12
    peak = peak_tflops(device)
    return {"tflops": tflops, "mfu": tflops / peak if peak else None}
