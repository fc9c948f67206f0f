"""Video QA training batches: one row per (video, question), the video stored once per sample.

    loader = build_qa_loader(cfg.data, batch_size=32, num_frames=12, img_size=224, seed=0,
                             rank=rank, world_size=world, start_step=resume_step,
                             answer_fits=fits)
    batch = next(loader)
    # {"video": float [B, 3, T, H, W], "question": list[str] (clean_caption'ed),
    #  "answers": list[str] (the distinct answers of every question, flat),
    #  "weights": float [A] (their frequencies), "answer_question": long [A] (0..B-1),
    #  "question_id": list[str], "key": list[str], "step": int, "epoch": int}

Sources (``cfg.sources``) are dataset.json URIs from ``umt shard`` whose samples carry a
``questions`` list (:mod:`umt.data.downstream`; one media type over all sources), or
``["synthetic"]``: the synthetic clips with a colour and a direction question each
(:mod:`umt.data.synthetic_tasks`), a pure function of (seed, step, rank).

A training stream of :mod:`umt.data.loader_kit`, as the Stage-2 loader's (``umt.data.vl_loader``):
shards resampled per rank and worker with weights by question counts, the official 'rand' frame
sampler, ``RandomResizedCrop(img_size, crop_scale)`` bicubic + optional flip with one box per
clip; one random question per visit of a video, a video visited as often as it has questions
(:func:`umt.data.loader_kit.spread_rows`), so one video's questions rarely meet in a batch. An epoch is ``num_questions // (batch x world size)`` batches (dataset.json's
``num_questions``; without it one row per sample is assumed, with a warning); ``epoch_steps``
overrides. A question is trained with all its distinct answers weighted by frequency (official
``vqa_collate_fn``). Bad rows -- a sample without questions, malformed questions, an answer
longer than ``answer_fits`` allows (the decoder would see it truncated) -- are skipped and
counted, never fatal.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from umt.data import dataset_json, synthetic, synthetic_tasks
from umt.data.captions import clean_caption
from umt.data.decoders import get_decoder
from umt.data.downstream import AnnotationError, answers_with_weights, parse_questions
from umt.data.loader_kit import (
    ClipLoader,
    Skips,
    TrainStream,
    data_loader,
    rank_shards,
    skip_sample,
    spread_rows,
    train_stages,
)
from umt.data.samples import SampleError, media_of, parse_meta, read_image, read_video
from umt.data.sampling import vl_frame_indices
from umt.data.transforms import normalize, to_float, vl_train_transform
from umt.seeds import derive_seed

log = logging.getLogger(__name__)


def _question_rows(src: Iterator[dict], *, skips: Skips, answer_fits, rate_of: dict[str, float],
                   spread: int, seed_parts: tuple = ()) -> Iterator[dict]:
    """Tar samples -> (video, question) rows, one random question per visit of a video and a
    video visited as often as it has questions (:func:`umt.data.loader_kit.spread_rows`): one
    video's questions do not meet in a batch."""
    def rows_of(sample: dict) -> list[dict]:
        try:
            meta = parse_meta(sample)
            media_of(sample)
            if meta.get("questions") in (None, []):
                raise SampleError("no questions")
            questions = parse_questions(meta["questions"], str(meta.get("id") or sample.get("__key__")))
        except AnnotationError as e:
            skip_sample(skips, sample, SampleError(f"bad questions: {e}"))
            return []
        except Exception as e:
            skip_sample(skips, sample, e)
            return []
        rows = []
        for q in questions:
            too_long = [a for a in q["answers"] if answer_fits is not None and not answer_fits(a)]
            if too_long:
                skip_sample(skips, sample, SampleError(f"answer too long: {too_long[0]!r:.60} does not "
                                                 f"fit qa.max_answer_len (question {q['id']})"))
                continue
            rows.append({"sample": sample, "meta": meta, "question": q})
        return rows

    return spread_rows(src, rows_of=rows_of, rate_of=rate_of, spread=spread, seed_parts=seed_parts)


def _qa_sample(row: dict, *, decoder, num_frames: int, img_size: int, scale, flip: bool,
               max_pixels: Optional[int], skips: Skips, rng: np.random.Generator) -> dict:
    sample = row["sample"]
    try:
        question = clean_caption(row["question"]["question"])
        if not question:
            raise SampleError("empty question after cleaning")
        _, data, kind = media_of(sample)
        if kind == "image":
            frames = read_image(data, max_pixels)
        else:
            frames = read_video(data, row["meta"], decoder,
                                lambda n: vl_frame_indices(num_frames, n, "rand", rng),
                                num_frames, max_pixels)
        video = vl_train_transform(frames, img_size, scale, flip, rng)  # [3, T, S, S]
    except Exception as e:
        return skip_sample(skips, sample, e)
    skips.ok()
    answers, weights = answers_with_weights(row["question"]["answers"])
    return {"video": video, "question": question, "answers": answers, "weights": weights,
            "question_id": row["question"]["id"], "key": sample.get("__key__", "?")}


def collate(rows: list[dict], skips: Optional[Skips] = None) -> dict:
    """Rows -> a batch; answers flattened with the index of their question (official
    ``vqa_collate_fn``'s answers, weights and counts ``n``)."""
    answers, weights, owner = [], [], []
    for i, r in enumerate(rows):
        answers += r["answers"]
        weights += r["weights"]
        owner += [i] * len(r["answers"])
    return {"video": torch.stack([r["video"] for r in rows]),
            "question": [r["question"] for r in rows], "answers": answers,
            "weights": torch.tensor(weights, dtype=torch.float32),
            "answer_question": torch.tensor(owner, dtype=torch.long),
            "question_id": [r["question_id"] for r in rows], "key": [r["key"] for r in rows],
            "skipped": dict(skips.take()) if skips is not None else {}}


def describe_qa_sources(uris: list[str]) -> tuple[list[dataset_json.DatasetInfo], str, int]:
    """Load the dataset.json files: ``(infos, media, questions per epoch)``."""
    infos = [dataset_json.load(u) for u in uris]
    kinds = {k for info in infos for k, n in info.media.items() if n > 0}
    if len(kinds) > 1:
        raise ValueError(f"data.sources={uris} mix {sorted(kinds)}: QA sources must all hold "
                         f"videos or all hold images")
    rows = 0
    for uri, info in zip(uris, infos):
        if info.num_questions is None:
            log.warning("%s records no question count (sharded before umt recorded QA "
                        "questions): assuming one question per sample for the epoch length", uri)
            rows += info.num_samples
        elif info.num_questions == 0:
            raise ValueError(f"{uri} holds no QA questions: shard a manifest with a 'questions' "
                             f"column (docs/downstream.md, Video QA)")
        else:
            rows += info.num_questions
    return infos, (kinds.pop() if kinds else "video"), rows


class _SyntheticQA:
    """Synthetic clips, two questions each (colour, direction), exact epochs; a pure function
    of (seed, step, rank)."""

    num_skipped = 0

    def __init__(self, *, batch_size: int, num_frames: int, img_size: int, size: int, seed: int,
                 rank: int, world_size: int, start: int, epoch_steps: int):
        self.batch_size, self.num_frames, self.img_size = batch_size, num_frames, img_size
        self.rows, self.seed, self.rank, self.world = 2 * size, seed, rank, world_size
        self.step, self.epoch_steps = start, epoch_steps
        from collections import Counter

        self.skip_reasons = Counter()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        epoch, pos = divmod(self.step, self.epoch_steps)
        perm = np.random.default_rng(derive_seed("synthetic-qa", self.seed, epoch)).permutation(self.rows)
        first = (pos * self.world + self.rank) * self.batch_size
        rows = []
        for j in range(self.batch_size):
            index, which = divmod(int(perm[(first + j) % self.rows]), 2)
            clip_seed = derive_seed("clip", self.seed, index)
            frames, label, caption = synthetic.render_clip(clip_seed, self.num_frames, self.img_size)
            key = f"synthetic-{index:06d}"
            q = synthetic_tasks.questions_for(label, synthetic_tasks.colour_of(caption), key)[which]
            rows.append({"video": normalize(to_float(frames)), "question": clean_caption(q["question"]),
                         "answers": [q["answer"]], "weights": [1.0], "question_id": q["id"],
                         "key": key})
        batch = collate(rows)
        batch.pop("skipped")
        batch.update(step=self.step, epoch=epoch)
        self.step += 1
        return batch


def build_qa_loader(cfg, *, batch_size: int, num_frames: int, img_size: int, seed: int = 0,
                    rank: int = 0, world_size: int = 1, start_step: int = 0,
                    answer_fits: Optional[Callable[[str], bool]] = None) -> Any:
    """QA training batches for this rank from global step ``start_step`` on (see the module
    docstring). ``cfg``: :class:`umt.configs.finetune_qa.QADataConfig`; ``answer_fits(answer)``:
    False for answers the decoder cannot hold (picklable: it runs in DataLoader workers)."""
    if list(cfg.sources) == ["synthetic"]:
        steps = cfg.epoch_steps or max(1, 2 * cfg.synthetic_size // (batch_size * world_size))
        return _SyntheticQA(batch_size=batch_size, num_frames=num_frames, img_size=img_size,
                            size=cfg.synthetic_size, seed=seed, rank=rank, world_size=world_size,
                            start=start_step, epoch_steps=steps)
    infos, media, rows = describe_qa_sources(list(cfg.sources))
    epoch_steps = cfg.epoch_steps or max(1, rows // (batch_size * world_size))
    urls, weights, rate_of = [], [], {}
    for info in infos:
        for shard, uri in zip(info.shards, info.shard_uris()):
            urls.append(uri)
            # One row per visit (spread_rows): shards drawn by their questions per video.
            rate = (shard.num_questions / max(1, shard.num_samples)
                    if shard.num_questions is not None else None)
            weights.append(float(shard.num_samples if rate is None else rate))
            if rate:
                rate_of[uri] = rate
    mine = rank_shards(list(range(len(urls))), rank, world_size)
    if not sum(weights[i] for i in mine) > 0:
        raise ValueError(f"rank {rank}'s QA shards hold no questions")
    skips = Skips()
    sample_fn = partial(_qa_sample, decoder=get_decoder(cfg.decoder), num_frames=num_frames,
                        img_size=img_size, scale=tuple(cfg.crop_scale), flip=cfg.flip,
                        max_pixels=cfg.max_pixels, skips=skips)

    make_stages = partial(train_stages, skips=skips, sample_fn=sample_fn,
                          rows=partial(_question_rows, skips=skips, answer_fits=answer_fits,
                                       rate_of=rate_of,
                                       spread=max(cfg.shuffle_buffer, batch_size)),
                          shuffle_buffer=cfg.shuffle_buffer, batch_size=batch_size,
                          collate=partial(collate, skips=skips))
    log.info("QA epoch: %d batches per rank (%d questions, %s)", epoch_steps, rows, media)
    stream = TrainStream([urls[i] for i in mine], make_stages, seed=("qa", seed), rank=rank,
                         start_step=start_step, epoch_steps=epoch_steps,
                         weights=[weights[i] for i in mine])
    return ClipLoader(data_loader(stream, cfg.num_workers), start_step, infos[0], epoch_steps)
