"""Model FLOPs of the Stage-1/2 steps (umt.train.flops) against torch's own FLOP counter, the
peak table, and the loop's tflops/mfu metrics."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from umt.configs import Stage1Config, load_config
from umt.configs.stage2 import Stage2Config
from umt.losses import mlm_mask
from umt.masking import semantic_mask, visible_count
from umt.models.pretrain import visible_indices
from umt.models.text import tokenize
from umt.train import flops as F


@pytest.fixture
def no_mha_fastpath():
    # The fused inference path of nn.MultiheadAttention is one op FlopCounterMode cannot see
    # into; the plain path runs the same matrix products through ops it counts.
    torch.backends.mha.set_fastpath_enabled(False)
    yield
    torch.backends.mha.set_fastpath_enabled(True)


def counted(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_stage1_flops_match_the_flop_counter(no_mha_fastpath):
    from umt.train.stage1 import build_models

    torch.manual_seed(0)
    cfg = load_config(Stage1Config, "stage1", "tiny", [])
    m = build_models(cfg, torch.device("cpu"))
    student, teacher = m.model.train(), m.frozen["teacher"]
    b, t = 2, cfg.model.num_frames
    x = torch.randn(b, 3, t, cfg.model.img_size, cfg.model.img_size)
    teacher_counted = counted(lambda: teacher(x)) / b
    # the formula leaves out the class-token attention the teacher adds for the mask (~4% here)
    assert teacher_counted == pytest.approx(F.teacher_flops(teacher, t), rel=0.08)

    _, attn = teacher(x)
    n_vis = visible_count("attention", cfg.mask.ratio, t, attn.shape[2])
    idx = visible_indices(semantic_mask(attn, cfg.mask.ratio), n_vis)
    student_counted = counted(lambda: student(x, None, visible_idx=idx).sum().backward()) / b
    assert student_counted == pytest.approx(F.student_train_flops(student, n_vis), rel=0.05)
    assert F.stage1_flops_per_clip(student, teacher, t, n_vis) == pytest.approx(
        F.teacher_flops(teacher, t) + F.student_train_flops(student, n_vis))


def test_stage2_flops_match_the_flop_counter(no_mha_fastpath):
    from umt.train.stage2 import build_models

    torch.manual_seed(0)
    cfg = load_config(Stage2Config, "stage2", "tiny", [])
    m = build_models(cfg, torch.device("cpu"))
    model, teacher, tok = m.model.train(), m.frozen["teacher"], m.extras["tokenizer"]
    b, t, size = 4, cfg.model.num_frames, cfg.model.img_size
    x = torch.randn(b, 3, t, size, size)
    ids, att = tokenize(tok, ["a man plays a guitar on a stage in the park at night"] * b,
                        cfg.data.max_txt_len)
    mlm_ids, labels = mlm_mask(ids, len(tok), tok.pad_token_id, tok.cls_token_id,
                               tok.mask_token_id, prob=0.5, generator=torch.Generator().manual_seed(0))
    positions = float((labels != -100).sum()) / b

    def step():
        _, attn = teacher(x)
        n_vis = visible_count("attention", cfg.mask.video_ratio, t, attn.shape[2])
        idx = visible_indices(semantic_mask(attn, cfg.mask.video_ratio), n_vis)
        out = model(x, ids, att, torch.arange(b), visible_idx=idx, mlm_input_ids=mlm_ids,
                    mlm_labels=labels)
        assert out.vtm_logits.shape[0] == 3 * b
        (out.uta.sum() + out.video_feat.sum() + out.text_feat.sum() + out.vtm_logits.sum()
         + out.mlm_logits.sum()).backward()

    n_vis = visible_count("attention", cfg.mask.video_ratio, t, (size // 16) ** 2)
    formula = F.stage2_flops_per_sample(model, teacher, t, n_vis, cfg.data.max_txt_len,
                                        mlm_prob=positions / cfg.data.max_txt_len)
    assert counted(step) / b == pytest.approx(formula, rel=0.05)
    # switched-off losses cost nothing
    less = F.stage2_flops_per_sample(model, None, t, n_vis, cfg.data.max_txt_len, vtm=False,
                                     mlm=False, uta=False)
    assert 0 < less < formula / 2


def test_peak_table_and_throughput():
    assert F.peak_tflops_of("NVIDIA H200") == 989.0
    assert F.peak_tflops_of("NVIDIA H100 80GB HBM3") == 989.0
    assert F.peak_tflops_of("NVIDIA H100 PCIe") == 756.0
    assert F.peak_tflops_of("NVIDIA A100-SXM4-80GB") == 312.0
    assert F.peak_tflops_of("NVIDIA A10G") == 70.0
    assert F.peak_tflops_of("NVIDIA L40S") == 362.0
    assert F.peak_tflops_of("NVIDIA L4") == 121.0
    assert F.peak_tflops_of("Some Future Accelerator") is None
    assert F.peak_tflops("cpu") is None
    assert F.throughput(2e12, 4.0, "cpu") == {"tflops": 0.5, "mfu": None}


def test_the_loop_logs_tflops_and_mfu(tmp_path):
    from umt.train import stage1

    out = tmp_path / "run"
    overrides = [f"train.output_dir={out}", "train.steps=2", "train.log_every=1",
                 "train.batch_size=2", "train.ckpt_every=2"]
    stage1.main("tiny", overrides)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    cfg = load_config(Stage1Config, "stage1", "tiny", overrides)
    m = stage1.build_models(cfg, torch.device("cpu"))
    grid = m.model.encoder.patch_embed.grid
    n_vis = visible_count(cfg.mask.type, cfg.mask.ratio, grid[0], grid[1] * grid[2])
    per_step = 2 * F.stage1_flops_per_clip(m.model, m.frozen["teacher"], grid[0], n_vis)
    for r in records:
        assert r["mfu"] is None  # CPU: no peak to compare against
        # the logged rate is the step's model FLOPs over the logged step time
        assert r["tflops"] == pytest.approx(per_step / r["step_time_s"] / 1e12, rel=1e-6)
