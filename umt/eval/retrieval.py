"""Text-video retrieval evaluation with ITM re-ranking, as the official ``evaluation`` of
``multi_modality/tasks/retrieval_utils.py``.

1. Every video once (``umt.data``'s retrieval loader: frames at the middle of T equal segments,
   ``Resize((S, S))`` bicubic, no crop; split over ranks and workers, each video read exactly
   once): all tokens (no mask) and per-frame features.
2. Every caption of every video (cleaned like the official ``pre_text``, ``max_txt_len``
   tokens): the text-only layers' output and the ``[CLS]`` feature.
3. Similarity: per-frame cosine averaged over frames, no temperature -> ``[videos, texts]``.
4. Re-ranking: in each direction separately, each row's top ``k`` candidates are re-scored by
   the fusion layers' ITM positive logit, which replaces the similarity there; everything
   below the top k is set to -100 (so it ranks below every re-scored candidate).
5. ``umt.eval.retrieval_metrics`` on both the similarity and the re-ranked scores.

Memory: only what the similarity needs -- keys, captions and the small per-frame features --
is gathered to every rank; each video's full token set (the bulk: MSRVTT-1k at 12 frames,
~7 GB for B/16) stays on the rank that read it. Re-ranking runs where the tokens are: a rank
scores the video-to-text rows of its own videos, and of each text-to-video row the candidates
that are its videos; only the scores are gathered. Every rank encodes every caption (cheap next
to the videos). Peak memory per rank: BENCHMARKS.md (``benchmarks/bench_retrieval_memory.py``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from umt.eval.metrics import retrieval_metrics
from umt.losses import similarity
from umt.runtime import distributed
from umt.runtime.common import autocast

log = logging.getLogger(__name__)
BELOW_TOP_K = -100.0  # official fill value outside the re-ranked top k


@dataclass
class RetrievalSet:
    """Encoded videos and captions of one evaluation set: every rank holds all of it except the
    video tokens, of which it holds its own videos' (``token_row``)."""

    keys: list[str]                 # [V] video keys, in dataset order
    video_feat: torch.Tensor        # [V, T, E] per-frame, L2-normalised
    video_tokens: torch.Tensor      # [V_here, N, D] every token (for the fusion layers)
    text_feat: torch.Tensor         # [X, E]
    text_hidden: torch.Tensor       # [X, L, W] output of the text-only layers
    text_mask: torch.Tensor         # [X, L]
    text_to_video: list             # [X] the video of each caption (or its videos: a list)
    # [V] long: video v's row in video_tokens, -1 where another rank holds it; None: every
    # video here, row v (one process, or a set built by hand)
    token_row: Optional[torch.Tensor] = None

    def rows_here(self) -> torch.Tensor:
        """``[V]`` long: ``token_row``, or ``0..V-1`` when every video is here."""
        if self.token_row is None:
            return torch.arange(len(self.keys))
        return self.token_row


def _gather_parts(parts: dict[str, Any], info: distributed.DistInfo) -> list[dict[str, Any]]:
    return distributed.gather_objects(parts, info) if info.world_size > 1 else [parts]


def query_texts(captions: list[list[str]], keys: list[str], match_by: str = "video",
                paragraph: bool = False) -> tuple[list[str], list]:
    """The text queries of a set and the ground truth of each: ``(texts, text_to_video)``.

    ``captions[v]``: the cleaned captions of video ``v``. ``paragraph``: one query per video,
    its captions joined with " " (official paragraph retrieval). ``match_by="video"``: every
    caption is its own query, its ground truth the video (an int); ``"caption"``: each distinct
    text once, its ground truth every video that has it (a list; official
    ``has_multi_vision_gt``).
    """
    from umt.data.captions import clean_caption

    texts, text_to_video = [], []
    for v, caps in enumerate(captions):
        if not caps:
            raise ValueError(f"video {keys[v]} has no caption: every evaluation video needs one")
        for text in ([clean_caption(" ".join(caps))] if paragraph else caps):
            texts.append(text)
            text_to_video.append(v)
    if match_by == "video":
        return texts, text_to_video
    if match_by != "caption":
        raise ValueError(f"match_by={match_by!r}: choose 'video' or 'caption'")
    videos: dict[str, list[int]] = {}
    for text, v in zip(texts, text_to_video):
        if v not in videos.setdefault(text, []):
            videos[text].append(v)
    return list(videos), list(videos.values())


@torch.no_grad()
def encode_set(model, batches, tokenizer, cfg, *, device: torch.device, precision: str,
               info: distributed.DistInfo) -> RetrievalSet:
    """Encode this rank's share of the videos, gather them in dataset order (so the result does
    not depend on the number of ranks or workers), then encode every caption."""
    from umt.models.text import tokenize

    keys, index, vfeat, vtok, captions = [], [], [], [], []
    for batch in batches:
        video = batch["video"].to(device)
        with autocast(device, precision):
            tokens, feat = model.encode_video(video, per_frame=True)
        keys += list(batch["key"])
        index += [int(i) for i in batch["index"]]
        vfeat.append(feat.float().cpu())
        vtok.append(tokens.cpu())
        captions += [list(caps) for caps in batch["captions"]]  # cleaned by the loader
    # The tokens stay here: only the small parts travel (see the module docstring).
    parts = {"keys": keys, "index": index, "captions": captions,
             "vfeat": torch.cat(vfeat) if vfeat else None}
    gathered = _gather_parts(parts, info)
    if not any(p["keys"] for p in gathered):
        raise ValueError("the retrieval set has no readable videos")
    all_index = [i for p in gathered for i in p["index"]]
    if len(set(all_index)) != len(all_index):
        raise RuntimeError("a video was read twice by the evaluation loader (dataset positions repeat)")
    # Dataset order, whatever the number of ranks and workers.
    order = sorted(range(len(all_index)), key=all_index.__getitem__)
    if cfg.max_videos:
        order = order[:cfg.max_videos]
    first = sum(len(p["keys"]) for p in gathered[:info.rank])  # this rank's first position
    token_row = torch.tensor([j - first if first <= j < first + len(keys) else -1 for j in order],
                             dtype=torch.long)
    video_tokens = torch.cat(vtok) if vtok else torch.zeros(0)
    vtok.clear()  # the batches' copies
    all_keys = [k for p in gathered for k in p["keys"]]
    all_caps = [c for p in gathered for c in p["captions"]]
    video_feat = torch.cat([p["vfeat"] for p in gathered if p["keys"]])[order]
    keys = [all_keys[i] for i in order]
    texts, text_to_video = query_texts([all_caps[i] for i in order], keys,
                                       getattr(cfg, "match_by", "video"), getattr(cfg, "paragraph", False))
    # Every rank encodes all captions (cheap next to the videos) in the same order.
    tfeat, thid, tmask = [], [], []
    for s in range(0, len(texts), cfg.batch_size * 4):
        ids, att = tokenize(tokenizer, texts[s:s + cfg.batch_size * 4], cfg.max_txt_len, device)
        with autocast(device, precision):
            hidden, feat = model.encode_text(ids, att)
        tfeat.append(feat.float().cpu())
        thid.append(hidden.cpu())
        tmask.append(att.cpu())
    return RetrievalSet(keys, video_feat, video_tokens, torch.cat(tfeat), torch.cat(thid),
                        torch.cat(tmask), text_to_video, token_row=token_row)


@torch.no_grad()
def itm_rerank(model, data: RetrievalSet, sim_v2t: torch.Tensor, k: int, *, itm_batch: int,
               device: torch.device, precision: str, info: distributed.DistInfo
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores_v2t [V, X], scores_t2v [X, V])``: the top ``k`` of each row re-scored by the
    ITM positive logit, the rest ``-100``. Each pair is scored by the rank that holds its
    video's tokens (``data.token_row``); the scores are gathered."""
    here = data.rows_here()                                              # [V]
    if data.token_row is None and info.world_size > 1:  # a set built by hand, whole on every rank
        here = torch.where(torch.arange(len(here)) % info.world_size == info.rank, here, -1)

    def score(pairs) -> torch.Tensor:
        out = []
        for v, t, m in pairs:
            with autocast(device, precision):
                logits = model.itm_logits(v.to(device), t.to(device), m.to(device))
            out.append(logits[:, 1].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def fill(sim: torch.Tensor, rows: dict) -> torch.Tensor:
        out = torch.full_like(sim, BELOW_TOP_K)
        for part in _gather_parts(rows, info):
            for r, (cand, scores) in part.items():
                out[r, cand] = scores
        return out

    # Video to text: the rows of this rank's videos, each against its top k texts.
    kk = min(k, sim_v2t.shape[1])
    v2t: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for r in torch.nonzero(here >= 0).flatten().tolist():
        top = sim_v2t[r].topk(kk).indices
        tokens = data.video_tokens[here[r]]
        v2t[r] = (top, score((tokens.expand(len(c), -1, -1), data.text_hidden[c], data.text_mask[c])
                             for c in top.split(itm_batch)))
    # Text to video: of every text's top k videos, those held here.
    sim_t2v = sim_v2t.t().contiguous()
    kk = min(k, sim_t2v.shape[1])
    t2v: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for r in range(sim_t2v.shape[0]):
        top = sim_t2v[r].topk(kk).indices
        mine = top[here[top] >= 0]
        if len(mine):
            t2v[r] = (mine, score((data.video_tokens[here[c]], data.text_hidden[r].expand(len(c), -1, -1),
                                   data.text_mask[r].expand(len(c), -1)) for c in mine.split(itm_batch)))
    return fill(sim_v2t, v2t), fill(sim_t2v, t2v)


def retrieval_scores(model, data: RetrievalSet, cfg, *, device: torch.device, precision: str,
                     info: distributed.DistInfo) -> dict[str, Any]:
    """Similarity-only and ITM re-ranked metrics of an encoded set."""
    sim_v2t = similarity(data.video_feat, data.text_feat)              # [V, X], no temperature
    result: dict[str, Any] = {"similarity": retrieval_metrics(sim_v2t.t(), data.text_to_video)}
    if cfg.k > 0:
        v2t, t2v = itm_rerank(model, data, sim_v2t, cfg.k, itm_batch=cfg.itm_batch_size,
                              device=device, precision=precision, info=info)
        result["itm"] = retrieval_metrics(t2v, data.text_to_video, sim_v2t=v2t)
    return result


def evaluate_retrieval(model, source: str, tokenizer, cfg, *, dist: distributed.DistInfo,
                       precision: str = "fp32", num_workers: Optional[int] = None) -> dict[str, float]:
    """Zero-shot retrieval of ``model`` on ``source`` (dataset.json), flat metrics for
    ``metrics.jsonl``: the re-ranked ones unprefixed (the official headline numbers), the
    similarity-only ones under ``sim/``."""
    full = run_retrieval(model, source, tokenizer, cfg, dist=dist, precision=precision,
                         num_workers=num_workers)
    flat = {f"sim/{k}": v for k, v in full["similarity"].items()}
    flat.update(full.get("itm", {}))
    flat.update({"num_videos": full["num_videos"], "num_texts": full["num_texts"]})
    return flat


def eval_videos(source: str, cfg, dist: distributed.DistInfo, num_workers: Optional[int] = None):
    """This rank's share of the videos of ``source`` (their test clips, with captions and
    metadata) at the batch size, frames, resolution, decoder and workers of ``cfg``, an
    evaluation section (retrieval, multiple choice, QA); ``num_workers`` overrides cfg's."""
    from umt.data.retrieval_loader import build_retrieval_loader

    return build_retrieval_loader(source, batch_size=cfg.batch_size, num_frames=cfg.num_frames,
                                  img_size=cfg.img_size, rank=dist.rank,
                                  world_size=dist.world_size, decoder=cfg.decoder,
                                  num_workers=cfg.num_workers if num_workers is None else num_workers)


def run_retrieval(model, source: str, tokenizer, cfg, *, dist: distributed.DistInfo,
                  precision: str = "fp32", num_workers: Optional[int] = None) -> dict[str, Any]:
    """The whole protocol on ``source``; returns the ``metrics.json`` content."""
    was_training = model.training
    model.eval()
    loader = eval_videos(source, cfg, dist, num_workers)
    data = encode_set(model, loader, tokenizer, cfg, device=dist.device, precision=precision, info=dist)
    result = retrieval_scores(model, data, cfg, device=dist.device, precision=precision, info=dist)
    model.train(was_training)
    skipped = int(distributed.sum_over_ranks(getattr(loader, "num_skipped", 0), dist))
    return {"task": "retrieval", "source": source, "num_videos": len(data.keys),
            "num_texts": len(data.text_to_video), "samples_skipped": skipped,
            "protocol": {"frames": cfg.num_frames, "sampling": "middle of T equal segments",
                         "resolution": cfg.img_size, "resize": "square, bicubic, no crop",
                         "max_txt_len": cfg.max_txt_len, "k": cfg.k,
                         "match_by": getattr(cfg, "match_by", "video"),
                         "paragraph": getattr(cfg, "paragraph", False),
                         "similarity": "mean over frames of per-frame cosine, no temperature",
                         "rerank": "ITM positive logit replaces the similarity on the top k of "
                                   "each row, each direction separately; -100 below",
                         **{k: v for k, v in asdict(cfg).items() if k in ("max_videos",)}},
            **result}
