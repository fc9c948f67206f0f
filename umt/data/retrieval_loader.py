"""Zero-shot / fine-tuned retrieval evaluation: every video of a dataset.json once, with all its
captions, in the official protocol of the multi-modality code.

    loader = build_retrieval_loader("s3://b/msrvtt-test/dataset.json", batch_size=32,
                                    num_frames=4, img_size=224, rank=rank, world_size=world,
                                    num_workers=4)
    for batch in loader:
        # {"media": "video" | "image", "video": float [B, 3, T, H, W] (T = 1 for images),
        #  "key": list[str], "captions": list[list[str]] (clean_caption'ed, every caption of
        #  each video, [] when it has none), "index": long [B] (position in the dataset),
        #  "meta": list[dict] (each sample's parsed .json: MC candidates, QA questions...),
        #  "step": int}
    loader.num_skipped, loader.skip_reasons  # unreadable videos (not in any batch)

Protocol: frames at the middle of ``T`` equal segments (the multi-modality 'middle' sampler,
:func:`umt.data.sampling.vl_frame_indices`; not the Kinetics test positions), ``Resize((img_size,
img_size))`` bicubic with no crop (:func:`umt.data.transforms.vl_test_transform`).

Exactly once: the shards are split over ``world_size x num_workers`` readers when there are at
least that many shards (uneven counts are fine: some readers get one shard more), otherwise
each reader keeps a contiguous range of the dataset's positions and streams only the one or
two shards it touches. No resampling, no padding: the
ranks' batches together hold every readable video once, and the last batches may be smaller
(a rank may even get none). ``index`` (shard offset + position, from dataset.json) orders
gathered results independently of ranks and workers.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import torch

from umt.data import dataset_json
from umt.data.captions import clean_caption
from umt.data.decoders import get_decoder
from umt.data.loader_kit import (
    DEFAULT_MAX_PIXELS,
    ClipLoader,
    EvalSplit,
    Skips,
    data_loader,
    eval_pipeline,
    first_media,
    skip_sample,
)
from umt.data.samples import SampleError, captions_of, media_of, parse_meta, read_image, read_video
from umt.data.sampling import vl_frame_indices
from umt.data.transforms import vl_test_transform


def _select(src: Iterator[dict], split: EvalSplit) -> Iterator[dict]:
    """This reader's samples (:class:`umt.data.loader_kit.EvalSplit`), each with its dataset
    position."""
    for sample, index in split.select(src):
        sample["__index__"] = index
        yield sample


def _retrieval_sample(sample: dict, *, media: str, decoder, num_frames: int, img_size: int,
                      max_pixels: Optional[int], skips: Skips, rng=None) -> dict:
    try:
        meta = parse_meta(sample)
        _, data, kind = media_of(sample)
        if kind != media:
            raise SampleError(f"wrong media: a {kind} in a {media} retrieval set")
        if kind == "image":
            frames = read_image(data, max_pixels)
        else:
            frames = read_video(data, meta, decoder,
                                lambda n: vl_frame_indices(num_frames, n, "middle"),
                                num_frames, max_pixels)
        video = vl_test_transform(frames, img_size)  # [3, T, S, S]
        captions = [clean_caption(c) for c in captions_of(sample, meta)]
    except Exception as e:  # unreadable: counted; it is in no batch
        return skip_sample(skips, sample, e)
    skips.ok()
    return {"video": video, "key": sample.get("__key__", "?"), "captions": captions,
            "index": sample["__index__"], "meta": meta}


def _collate(samples: list[dict], *, media: str, skips: Skips) -> dict:
    return {"media": media, "video": torch.stack([s["video"] for s in samples]),
            "key": [s["key"] for s in samples], "captions": [s["captions"] for s in samples],
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "meta": [s["meta"] for s in samples], "skipped": dict(skips.take())}


def build_retrieval_loader(source: str, *, batch_size: int, num_frames: int, img_size: int,
                           rank: int = 0, world_size: int = 1, num_workers: int = 0,
                           decoder: str = "decord",
                           max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> ClipLoader:
    """One pass over this rank's share of the videos (or images) of ``source`` (dataset.json).

    The media type is the dataset's (its ``media`` summary, or its first sample); samples of
    another type are skipped and counted.
    """
    info = dataset_json.load(source)
    kinds = [k for k, n in info.media.items() if n > 0]
    if len(kinds) > 1:
        raise ValueError(f"{source}: a retrieval set holds one media type, this one has {info.media}")
    media = kinds[0] if kinds else first_media(info)
    split = EvalSplit(info.shard_uris(), rank, world_size, [s.num_samples for s in info.shards])
    skips = Skips()
    sample_fn = partial(_retrieval_sample, media=media, decoder=get_decoder(decoder),
                        num_frames=num_frames, img_size=img_size, max_pixels=max_pixels,
                        skips=skips)
    pipeline = eval_pipeline(split, skips=skips, sample_fn=sample_fn, batch_size=batch_size,
                             collate=partial(_collate, media=media, skips=skips),
                             select=partial(_select, split=split))
    loader = ClipLoader(data_loader(pipeline, num_workers), 0, info)
    loader.media = media
    return loader
