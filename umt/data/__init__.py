"""Video data: synthetic clips, sharding to WebDataset, streaming loaders.

Modules: ``manifest`` (what to shard), ``transcode`` (validate and
re-encode one input), ``shard`` (``umt shard``), ``dataset_json`` (the dataset description),
``decoders`` / ``sampling`` / ``transforms`` (clip reading), ``webdataset_loader`` and ``stream``
(training / evaluation loaders), ``synthetic`` (generated clips), ``cli`` (command functions).
"""

from __future__ import annotations

__all__ = ["build_pretrain_loader"]


def __getattr__(name: str):
    # Lazy: sharding worker processes import umt.data.* and must not pay for importing torch.
    if name == "build_pretrain_loader":
        from umt.data.stream import build_pretrain_loader

        return build_pretrain_loader
    raise AttributeError(f"module 'umt.data' has no attribute {name!r}")
