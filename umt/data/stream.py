"""The pretraining clip stream that every training stage reads: one interface, several sources.

``build_pretrain_loader(cfg, ...)`` yields batches as dicts::

    {"video": float [B, 3, T, H, W] (ImageNet-normalised), "label": long [B],
     "caption": list[str], "key": list[str]}

Sources: ``synthetic`` (procedural clips, no files; deterministic per (seed, step, rank) so a
resumed run sees exactly the batches an uninterrupted run would) and a ``dataset.json``
path / s3:// URI of WebDataset shards (``umt.data.webdataset_loader``).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from umt.configs.schema import DataConfig
from umt.data import synthetic
from umt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from umt.seeds import derive_seed


def _synthetic_batches(cfg: DataConfig, batch_size: int, num_frames: int, img_size: int,
                       seed: int, rank: int, start_step: int) -> Iterator[dict]:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    step = start_step
    while True:
        # Clip indices of this step, disjoint across ranks, cycling over synthetic_size clips.
        g = np.random.default_rng([seed, step])
        order = g.permutation(cfg.synthetic_size)
        first = (rank * batch_size) % cfg.synthetic_size
        idx = [int(order[(first + i) % cfg.synthetic_size]) for i in range(batch_size)]
        videos, labels, captions = [], [], []
        for i in idx:
            frames, label, caption = synthetic.render_clip(derive_seed("clip", seed, i), num_frames, img_size)
            clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255)  # [3, T, H, W]
            videos.append((clip - mean) / std)
            labels.append(label)
            captions.append(caption)
        yield {"video": torch.stack(videos), "label": torch.tensor(labels), "caption": captions,
               "key": [f"synthetic-{i:06d}" for i in idx], "step": step}
        step += 1


class _Epoched:
    """Batches with the epoch length every loader reports (``epoch_steps``: batches per rank),
    which the training loop turns ``train.epochs`` into steps with."""

    def __init__(self, batches: Iterator[dict], epoch_steps: int):
        self._batches, self.epoch_steps = batches, epoch_steps

    def __iter__(self) -> "_Epoched":
        return self

    def __next__(self) -> dict:
        return next(self._batches)


def build_pretrain_loader(cfg: DataConfig, *, batch_size: int, num_frames: int, img_size: int,
                          seed: int = 0, rank: int = 0, world_size: int = 1,
                          start_step: int = 0) -> Iterator[dict]:
    """An endless iterator of training batches for this rank (see module docstring)."""
    if cfg.source == "synthetic":
        from umt.data.loader_kit import default_epoch_steps

        batches = _synthetic_batches(cfg, batch_size, num_frames, img_size, seed, rank, start_step)
        return _Epoched(batches, cfg.epoch_steps or default_epoch_steps(
            cfg.synthetic_size, batch_size, world_size))
    from umt.data.webdataset_loader import build_webdataset_loader

    return build_webdataset_loader(cfg, batch_size=batch_size, num_frames=num_frames,
                                   img_size=img_size, seed=seed, rank=rank,
                                   world_size=world_size, start_step=start_step)
