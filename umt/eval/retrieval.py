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

Features are gathered to every rank (CPU); the re-ranking rows are split over ranks.
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
    """Encoded videos and captions of one evaluation set (every rank holds all of it)."""

    keys: list[str]                 # [V] video keys, in dataset order
    video_feat: torch.Tensor        # [V, T, E] per-frame, L2-normalised
    video_tokens: torch.Tensor      # [V, N, D] every token (for the fusion layers)
    text_feat: torch.Tensor         # [X, E]
    text_hidden: torch.Tensor       # [X, L, W] output of the text-only layers
    text_mask: torch.Tensor         # [X, L]
    text_to_video: list             # [X] the video of each caption (or its videos: a list)


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
    parts = {"keys": keys, "index": index, "captions": captions,
             "vfeat": torch.cat(vfeat) if vfeat else None, "vtok": torch.cat(vtok) if vtok else None}
    gathered = [p for p in _gather_parts(parts, info) if p["keys"]]
    if not gathered:
        raise ValueError("the retrieval set has no readable videos")
    all_keys = [k for p in gathered for k in p["keys"]]
    all_index = [i for p in gathered for i in p["index"]]
    if len(set(all_index)) != len(all_index):
        raise RuntimeError("a video was read twice by the evaluation loader (dataset positions repeat)")
    # Dataset order, whatever the number of ranks and workers.
    order = sorted(range(len(all_index)), key=all_index.__getitem__)
    if cfg.max_videos:
        order = order[:cfg.max_videos]
    all_caps = [c for p in gathered for c in p["captions"]]
    video_feat = torch.cat([p["vfeat"] for p in gathered])[order]
    video_tokens = torch.cat([p["vtok"] for p in gathered])[order]
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
                        torch.cat(tmask), text_to_video)


@torch.no_grad()
def itm_rerank(model, data: RetrievalSet, sim_v2t: torch.Tensor, k: int, *, itm_batch: int,
               device: torch.device, precision: str, info: distributed.DistInfo
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores_v2t [V, X], scores_t2v [X, V])``: the top ``k`` of each row re-scored by the
    ITM positive logit, the rest ``-100``. Rows are split over ranks, results gathered."""

    def direction(sim: torch.Tensor, pair) -> torch.Tensor:
        kk = min(k, sim.shape[1])
        out = torch.full_like(sim, BELOW_TOP_K)
        mine = list(range(info.rank, sim.shape[0], info.world_size))
        rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in mine:
            top = sim[r].topk(kk).indices
            scores = []
            for s in range(0, kk, itm_batch):
                cand = top[s:s + itm_batch]
                v, t, m = pair(r, cand)
                with autocast(device, precision):
                    logits = model.itm_logits(v.to(device), t.to(device), m.to(device))
                scores.append(logits[:, 1].float().cpu())
            rows[r] = (top, torch.cat(scores))
        for part in _gather_parts(rows, info):
            for r, (top, scores) in part.items():
                out[r, top] = scores
        return out

    def v2t_pair(r, cand):
        n = len(cand)
        return data.video_tokens[r].expand(n, -1, -1), data.text_hidden[cand], data.text_mask[cand]

    def t2v_pair(r, cand):
        n = len(cand)
        return (data.video_tokens[cand], data.text_hidden[r].expand(n, -1, -1),
                data.text_mask[r].expand(n, -1))

    return direction(sim_v2t, v2t_pair), direction(sim_v2t.t().contiguous(), t2v_pair)


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
