"""Losses as pure functions on tensors: UTA (Stages 1 and 2); VTC, VTM, MLM (Stage 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from umt.models.pretrain import gather_tokens, visible_indices


def uta_loss(student: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
             kind: str = "l2") -> torch.Tensor:
    """Align the student's visible tokens with the teacher's.

    ``student [K, B, N_vis, C]`` (unit vectors); ``target [K, B, N, C]`` with the bool ``mask
    [B, N]`` (True = masked) the student used, or ``target`` already gathered ``[K, B, N_vis, C]``.

    ``kind='l2'`` (the paper's): mean over layers, clips and visible tokens of ``2 - 2*cos``
    (for unit vectors, the squared distance). ``'mse'`` and ``'smooth_l1'`` are the official
    alternatives, averaged over every element.
    """
    if mask is not None:
        target = gather_tokens(target, visible_indices(mask))
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} differ")
    target = target.to(student.dtype)
    if kind == "l2":
        return (2 - 2 * (student * target).sum(-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, target)
    raise ValueError(f"unknown UTA loss {kind!r}: use l2, mse or smooth_l1")


# ----------------------------------------------------------------------------- Stage 2
# Official multi_modality/models/criterions.py. Under autocast every similarity, the division by
# the temperature and the (log-)softmax run in fp32 (autocast off): bf16 logits / 0.07 lose the
# precision the contrastive targets need.


def _fp32(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def similarity(video_feat: torch.Tensor, text_feat: torch.Tensor, temp=1.0) -> torch.Tensor:
    """Video-to-text similarity ``[Bv, Bt]`` (official ``get_sim``), fp32.

    ``video_feat [Bv, E]`` or per-frame ``[Bv, T, E]``, ``text_feat [Bt, E]``: both normalised
    (per frame), cosine per frame, averaged over frames, divided by ``temp``.
    """
    with _fp32(video_feat.device):
        v = F.normalize(video_feat.float(), dim=-1)
        t = F.normalize(text_feat.float(), dim=-1)
        if v.dim() == 2:
            v = v.unsqueeze(1)
        sim = torch.einsum("mld,nd->mln", v, t).mean(1)
        return sim / (temp.float() if isinstance(temp, torch.Tensor) else temp)


def positives(idx: torch.Tensor, idx_cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool ``[B, B']``: True where the sample ids are equal (row i, column j)."""
    idx_cols = idx if idx_cols is None else idx_cols
    return idx.view(-1, 1) == idx_cols.view(1, -1)


def vtc_loss(video_feat: torch.Tensor, text_feat: torch.Tensor, idx: torch.Tensor,
             temp) -> torch.Tensor:
    """Video-text contrastive loss, ``(v2t + t2v) / 2`` (official ``vtc_loss``).

    ``video_feat [B, E]`` or ``[B, T, E]``, ``text_feat [B, E]``, ``idx [B]``: the batch of all
    ranks (``umt.runtime.distributed.all_gather_with_grad``). Every pair with equal ids is a
    positive; each row's targets are its positives, normalised to sum 1 (the same target matrix
    in both directions, as officially).
    """
    sim = similarity(video_feat, text_feat, temp)  # [B, B] fp32
    with _fp32(sim.device):
        targets = positives(idx).float()
        targets = targets / targets.sum(1, keepdim=True)
        v2t = -(F.log_softmax(sim, dim=1) * targets).sum(1).mean()
        t2v = -(F.log_softmax(sim.t(), dim=1) * targets).sum(1).mean()
        return (v2t + t2v) / 2


@dataclass
class HardNegatives:
    """One negative video per text and one negative text per video (indices into the batch).

    ``valid [B]``: row i has a possible negative (some sample with another id); only valid rows
    enter the VTM loss. For pairs ``(v_i, t_i)`` both directions share this condition.
    """

    video_for_text: torch.Tensor  # [B] long
    text_for_video: torch.Tensor  # [B] long
    valid: torch.Tensor           # [B] bool

    @property
    def skipped(self) -> int:
        return int((~self.valid).sum())

    @classmethod
    def from_indices(cls, video_for_text: torch.Tensor, text_for_video: torch.Tensor,
                     idx: torch.Tensor, media: Optional[torch.Tensor] = None) -> "HardNegatives":
        """Given indices (tests, references): checked never to pick a positive (or, given
        ``media``, a row of the same media)."""
        pos = excluded(idx, media)
        rows = torch.arange(len(idx), device=idx.device)
        if bool(pos[rows, video_for_text].any()) or bool(pos[text_for_video, rows].any()):
            raise ValueError("a given hard negative shares its sample id (a positive) or its media "
                             "with the row")
        return cls(video_for_text, text_for_video, torch.ones_like(idx, dtype=torch.bool))


def excluded(idx: torch.Tensor, media: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool ``[B, B]``: pairs that can never be VTM negatives -- equal sample ids (positives)
    or, given ``media [B]``, the same media (another caption of the same video or image)."""
    out = positives(idx)
    return out if media is None else out | positives(media)


@torch.no_grad()
def hard_negative_weights(sim_v2t: torch.Tensor, idx: torch.Tensor,
                          media: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling weights ``(weights_v2t [B, B], weights_t2v [B, B])`` (official ``vtm_loss``).

    ``sim_v2t``: ``similarity(video_feat, text_feat, temp)`` of the local batch. Each row is
    ``softmax(sim / temp)`` (over texts for a video, over videos for a text) with every positive
    -- and, given ``media``, every row of the same media -- set to 0. The official ``+ 1e-4``
    before the softmax cancels out and is left out.
    """
    with _fp32(sim_v2t.device):
        out = excluded(idx, media)
        w_v2t = F.softmax(sim_v2t.float(), dim=1).masked_fill(out, 0)
        w_t2v = F.softmax(sim_v2t.float().t(), dim=1).masked_fill(out, 0)
        return w_v2t, w_t2v


@torch.no_grad()
def sample_hard_negatives(sim_v2t: torch.Tensor, idx: torch.Tensor,
                          generator: Optional[torch.Generator] = None,
                          media: Optional[torch.Tensor] = None) -> HardNegatives:
    """Draw one negative video per text and one negative text per video from the local batch.

    ``sim_v2t [B, B]`` (``similarity(..., temp)``), ``idx [B]``, ``media [B]`` (optional: the
    media id of each row). Negatives are sampled with the weights of ``hard_negative_weights``
    (harder = more likely; never a positive, never a row of the same media: its other captions
    describe it too). A row whose every candidate is excluded (a batch of 1, all one id or
    media) has no negative: it is marked invalid (left out of the loss and counted) where the
    official code would raise. ``generator`` makes the draw reproducible (it must live on
    ``sim_v2t``'s device). With distinct media the draws equal those without ``media``.
    """
    w_v2t, w_t2v = hard_negative_weights(sim_v2t, idx, media)
    neg = ~excluded(idx, media)
    valid = neg.any(1)
    # multinomial refuses all-zero rows: give invalid rows any weights, their draw is unused.
    # Rows whose weights underflowed to 0 (sharp softmax) fall back to uniform over negatives.
    neg = neg.float()
    w_v2t = torch.where((w_v2t.sum(1, keepdim=True) > 0), w_v2t, neg)
    w_t2v = torch.where((w_t2v.sum(1, keepdim=True) > 0), w_t2v, neg)
    w_v2t[~valid] = 1.0
    w_t2v[~valid] = 1.0
    video_for_text = torch.multinomial(w_t2v, 1, generator=generator).squeeze(1)
    text_for_video = torch.multinomial(w_v2t, 1, generator=generator).squeeze(1)
    return HardNegatives(video_for_text, text_for_video, valid)


def vtm_loss(logits: torch.Tensor) -> torch.Tensor:
    """Video-text matching cross-entropy of ``logits [3M, 2]`` laid out ``[pos | neg | neg]``
    (``VisionLanguageModel.vtm_logits``): labels 1 for the first M rows, 0 for the other 2M,
    averaged over the 3M pairs (official). No rows -> 0 (still in the graph)."""
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    if logits.shape[0] % 3:
        raise ValueError(f"VTM logits must be [3M, 2] (pos | neg video | neg text), got {tuple(logits.shape)}")
    m = logits.shape[0] // 3
    labels = torch.zeros(3 * m, dtype=torch.long, device=logits.device)
    labels[:m] = 1
    with _fp32(logits.device):
        return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def mlm_mask(input_ids: torch.Tensor, vocab_size: int, pad_id: int, cls_id: int, mask_id: int,
             prob: float = 0.5, generator: Optional[torch.Generator] = None):
    """BERT masking as the official ``MLMLoss.mask``: ``input_ids [B, L]`` -> ``(masked_ids,
    labels)``, both ``[B, L]``.

    Each token is chosen with probability ``prob`` (0.5 in UMT), never ``[PAD]`` or ``[CLS]``
    (``[SEP]`` can be). Chosen tokens: 80% become ``[MASK]``; half of the rest a random id from
    the whole vocabulary (special tokens included); the remainder stay. ``labels`` hold the
    original id at chosen positions and -100 elsewhere. The draws are made on the CPU (or the
    ``generator``'s device) in the official order, so a CPU generator seeded like the official
    global RNG reproduces its masks exactly.
    """
    dev = generator.device if generator is not None else torch.device("cpu")
    shape = input_ids.shape
    ids = input_ids.to(dev).clone()
    chosen = torch.bernoulli(torch.full(shape, prob, device=dev), generator=generator).bool()
    chosen &= (ids != pad_id) & (ids != cls_id)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    replaced = torch.bernoulli(torch.full(shape, 0.8, device=dev), generator=generator).bool() & chosen
    ids[replaced] = mask_id
    randomised = (torch.bernoulli(torch.full(shape, 0.5, device=dev), generator=generator).bool()
                  & chosen & ~replaced)
    words = torch.randint(vocab_size, shape, dtype=torch.long, device=dev, generator=generator)
    ids[randomised] = words[randomised]
    return ids.to(input_ids.device), labels.to(input_ids.device)


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [P, vocab]`` at the masked positions against ``targets [P]``
    (mean over positions, fp32: the official CE over labels != -100). No position -> 0."""
    if targets.numel() == 0:
        return logits.float().sum() * 0.0
    with _fp32(logits.device):
        return F.cross_entropy(logits.float(), targets)
