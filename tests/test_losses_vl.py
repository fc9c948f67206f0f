"""Stage-2 losses (VTC, VTM, MLM) against hand-computed values; hard negatives; the gather."""

from __future__ import annotations

import datetime
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from umt.losses import (
    HardNegatives,
    hard_negative_weights,
    mlm_loss,
    mlm_mask,
    sample_hard_negatives,
    similarity,
    vtc_loss,
    vtm_loss,
)


def ce(logits: list[float], target: list[float]) -> float:
    """-sum_j target_j * log softmax(logits)_j, by hand."""
    z = math.log(sum(math.exp(v) for v in logits))
    return -sum(t * (v - z) for v, t in zip(logits, target))


def test_similarity_normalises_and_averages_frames():
    video = torch.tensor([[[2.0, 0.0], [0.0, 3.0]],    # clip 0: frames along x and y
                          [[1.0, 1.0], [1.0, 1.0]]])   # clip 1
    text = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    sim = similarity(video, text, temp=0.5)
    r = 1 / math.sqrt(2)
    want = torch.tensor([[(1 + 0) / 2, (0 + 1) / 2], [r, r]]) / 0.5
    torch.testing.assert_close(sim, want)
    torch.testing.assert_close(similarity(video[:, 0], text), torch.tensor([[1.0, 0.0], [r, r]]))


def test_vtc_hand_computed_single_positives():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    temp = torch.tensor(0.5)
    # sim/temp: row v0 = [2, 1.2], row v1 = [0, 1.6]; columns give the t2v rows
    v2t = (ce([2.0, 1.2], [1, 0]) + ce([0.0, 1.6], [0, 1])) / 2
    t2v = (ce([2.0, 0.0], [1, 0]) + ce([1.2, 1.6], [0, 1])) / 2
    got = vtc_loss(video, text, torch.tensor([4, 9]), temp)
    assert got.item() == pytest.approx((v2t + t2v) / 2, abs=1e-6)


def test_vtc_samples_sharing_an_id_are_all_positives():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    idx = torch.tensor([5, 5, 8])
    s = similarity(video, text, 0.1).tolist()
    tgt = [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]]
    v2t = sum(ce(s[i], tgt[i]) for i in range(3)) / 3
    t2v = sum(ce([s[j][i] for j in range(3)], tgt[i]) for i in range(3)) / 3
    assert vtc_loss(video, text, idx, 0.1).item() == pytest.approx((v2t + t2v) / 2, abs=1e-5)


def test_vtc_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    v, t = torch.randn(6, 3, 16), torch.randn(6, 16)
    idx = torch.arange(6)
    want = vtc_loss(v, t, idx, torch.tensor(0.07))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vtc_loss(v.bfloat16(), t.bfloat16(), idx, torch.tensor(0.07))
    assert got.dtype == torch.float32
    # only the bf16 rounding of the inputs remains (not bf16 logits / 0.07)
    assert abs(got.item() - want.item()) < 2e-2
    sim = similarity(v.bfloat16(), t.bfloat16(), 0.07)
    assert sim.dtype == torch.float32


def test_hard_negative_weights_hand_computed():
    sim = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    idx = torch.tensor([0, 0, 1])  # samples 0 and 1 share an id
    w_v2t, w_t2v = hard_negative_weights(sim, idx)
    def row(xs):
        return [math.exp(x) / sum(math.exp(y) for y in xs) for x in xs]
    e = torch.tensor([row([1.0, 0.0, 2.0]), row([0.5, 1.0, 0.0]), row([0.0, 0.0, 1.0])])
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(w_v2t, e.masked_fill(pos, 0))
    et = torch.tensor([row([1.0, 0.5, 0.0]), row([0.0, 1.0, 0.0]), row([2.0, 0.0, 1.0])])
    torch.testing.assert_close(w_t2v, et.masked_fill(pos, 0))


def test_hard_negatives_never_pick_a_positive_and_follow_the_weights():
    torch.manual_seed(0)
    idx = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    sim = torch.randn(8, 8) * 3
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(8, 8)
    for _ in range(3000):
        neg = sample_hard_negatives(sim, idx, generator=g)
        assert bool(neg.valid.all()) and neg.skipped == 0
        assert not bool((idx[neg.video_for_text] == idx).any())
        assert not bool((idx[neg.text_for_video] == idx).any())
        counts[torch.arange(8), neg.video_for_text] += 1
    _, w_t2v = hard_negative_weights(sim, idx)
    freq = counts / counts.sum(1, keepdim=True)
    assert (freq - w_t2v / w_t2v.sum(1, keepdim=True)).abs().max() < 0.04  # ~5 sigma at 3000 draws
    a = sample_hard_negatives(sim, idx, generator=torch.Generator().manual_seed(7))
    b = sample_hard_negatives(sim, idx, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.video_for_text, b.video_for_text) and torch.equal(a.text_for_video, b.text_for_video)


@pytest.mark.parametrize("idx", [[3], [5, 5, 5, 5]])
def test_rows_without_any_negative_are_left_out_and_counted(idx):
    idx = torch.tensor(idx)
    neg = sample_hard_negatives(torch.randn(len(idx), len(idx)), idx)  # official code raises here
    assert not bool(neg.valid.any()) and neg.skipped == len(idx)


def test_given_negatives_are_checked():
    idx = torch.tensor([0, 0, 1])
    ok = HardNegatives.from_indices(torch.tensor([2, 2, 0]), torch.tensor([2, 2, 1]), idx)
    assert ok.skipped == 0
    with pytest.raises(ValueError, match="positive"):
        HardNegatives.from_indices(torch.tensor([1, 2, 0]), torch.tensor([2, 2, 0]), idx)


def test_vtm_loss_hand_computed():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.5],   # positives (label 1)
                           [3.0, 0.0], [0.0, 1.0], [2.0, 2.5],    # negative videos
                           [1.0, 0.0], [0.0, 0.0], [-1.0, 1.0]])  # negative texts (label 0)
    want = sum(ce(r, [0, 1]) for r in logits[:3].tolist()) + sum(ce(r, [1, 0]) for r in logits[3:].tolist())
    assert vtm_loss(logits).item() == pytest.approx(want / 9, abs=1e-6)
    empty = torch.zeros(0, 2, requires_grad=True)
    z = vtm_loss(empty)
    assert z.item() == 0.0 and z.requires_grad
    with pytest.raises(ValueError, match="3M"):
        vtm_loss(torch.zeros(4, 2))


def test_mlm_loss_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    want = (ce([1.0, 2.0, 0.0], [0, 1, 0]) + ce([0.0, 0.0, 3.0], [1, 0, 0])) / 2
    assert mlm_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(want, abs=1e-6)
    assert mlm_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0


PAD, CLS, SEP, MASK, V = 0, 101, 102, 103, 30522


def test_mlm_mask_rules_and_rates():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, V, (4000, 32), generator=g)
    ids[:, 0] = CLS
    ids[:, 20] = SEP
    ids[:, 21:] = PAD
    masked, labels = mlm_mask(ids, V, PAD, CLS, MASK, prob=0.5, generator=g)
    chosen = labels != -100
    assert not bool(chosen[:, 0].any()) and not bool(chosen[:, 21:].any())  # [CLS], [PAD] never
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    eligible = ids[:, 1:21].numel()
    assert chosen.sum().item() / eligible == pytest.approx(0.5, abs=0.01)
    assert chosen[:, 20].float().mean().item() == pytest.approx(0.5, abs=0.03)  # [SEP] can be
    n = chosen.sum().item()
    to_mask = (masked[chosen] == MASK).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n
    assert to_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1, abs=0.01)
    rand = masked[chosen & (masked != MASK) & (masked != ids)]
    assert rand.numel() / n == pytest.approx(0.1, abs=0.01)
    assert int(rand.min()) < 1000  # from the whole vocabulary (inputs were all >= 1000)


def test_mlm_mask_reproducible_with_generator():
    ids = torch.randint(1000, V, (8, 32))
    a = mlm_mask(ids, V, PAD, CLS, MASK, generator=torch.Generator().manual_seed(3))
    b = mlm_mask(ids, V, PAD, CLS, MASK, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].device == ids.device and a[0].dtype == torch.long


# --------------------------------------------------------------------------- gather with grad
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SIZES = (3, 2)  # rank 0 holds 3 samples, rank 1 a short batch of 2


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 2, 8, generator=g), torch.randn(5, 8, generator=g), torch.tensor([0, 1, 1, 2, 3])


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from umt.runtime.distributed import all_gather_with_grad

    # A bounded wait: rank 0 runs in the test's process, which must not hang if rank 1 died.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        v, t, idx = _data()
        lo = sum(SIZES[:rank])
        sl = slice(lo, lo + SIZES[rank])
        result = {}
        for sum_grads in (False, True):
            lv, lt = v[sl].clone().requires_grad_(), t[sl].clone().requires_grad_()
            gv, gt = all_gather_with_grad(lv, sum_grads), all_gather_with_grad(lt, sum_grads)
            gidx = all_gather_with_grad(idx[sl])
            loss = vtc_loss(gv, gt, gidx, 0.1)
            loss.backward()
            result[sum_grads] = dict(loss=loss.detach(), gv=gv.detach(), gidx=gidx, dv=lv.grad, dt=lt.grad)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_gather_with_grad_two_processes(tmp_path):
    """VTC on features gathered from 2 real gloo processes (uneven batches) equals the loss of
    the whole batch in one process; the backward gives this rank's slice of that gradient
    (official, ``sum_grads=False``) or world_size times it (``sum_grads=True``, so that DDP's
    average equals one process's gradient)."""
    port = _free_port()
    # Rank 1 in a fresh process, rank 0 in this one: one interpreter start instead of two.
    other = mp.get_context("spawn").Process(target=_gather_worker, args=(1, port, str(tmp_path)))
    other.start()
    try:
        _gather_worker(0, port, str(tmp_path))
    finally:
        other.join(timeout=120)
    assert other.exitcode == 0
    v, t, idx = _data()
    v.requires_grad_(), t.requires_grad_()
    loss = vtc_loss(v, t, idx, 0.1)
    loss.backward()
    for rank in (0, 1):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        lo = sum(SIZES[:rank])
        sl = slice(lo, lo + SIZES[rank])
        for sum_grads, scale in ((False, 1.0), (True, 2.0)):
            r = res[sum_grads]
            torch.testing.assert_close(r["gv"], v.detach())
            assert torch.equal(r["gidx"], idx)
            torch.testing.assert_close(r["loss"], loss.detach())
            torch.testing.assert_close(r["dv"], scale * v.grad[sl])
            torch.testing.assert_close(r["dt"], scale * t.grad[sl])


def test_all_gather_with_grad_single_process_is_identity():
    from umt.runtime.distributed import all_gather_with_grad

    x = torch.randn(3, 4)
    assert all_gather_with_grad(x) is x


def test_underflowed_weights_fall_back_to_uniform_negatives():
    sim = torch.eye(3) * 2000.0  # temp at its floor: every negative's softmax weight is exactly 0
    idx = torch.arange(3)
    w_v2t, _ = hard_negative_weights(sim, idx)
    assert float(w_v2t.sum()) == 0.0  # the official multinomial would raise here
    neg = sample_hard_negatives(sim, idx, generator=torch.Generator().manual_seed(0))
    assert bool(neg.valid.all()) and not bool((neg.video_for_text == idx).any())
