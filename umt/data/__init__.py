"""Video data: synthetic clips, sharding to WebDataset, streaming loaders.

Modules: ``manifest`` (what to shard), ``annotation_formats`` (the official annotation files
read as manifests), ``transcode`` (validate and re-encode one input),
``shard`` (``umt shard``), ``dataset_json`` (the dataset description), ``samples`` (the tar
sample format, read defensively), ``decoders`` / ``sampling`` / ``transforms`` (clip reading),
``loader_kit`` (the pipeline stages and batch iterator every loader is built from),
``webdataset_loader`` and ``stream`` (Stage-1 training / evaluation loaders), ``vl_loader``
(Stage-2 captioned videos + images), ``action_loader`` (action recognition), ``qa_loader``
(video QA), ``retrieval_loader`` (retrieval evaluation), ``captions`` (official caption
cleaning), ``synthetic`` (generated clips), ``cli`` (command functions). See docs/data.md.
"""

from __future__ import annotations

__all__ = ["build_pretrain_loader", "build_vl_loader", "build_retrieval_loader", "clean_caption"]


def __getattr__(name: str):
    # Lazy: sharding worker processes import umt.data.* and must not pay for importing torch.
    if name == "build_pretrain_loader":
        from umt.data.stream import build_pretrain_loader

        return build_pretrain_loader
    if name == "build_vl_loader":
        from umt.data.vl_loader import build_vl_loader

        return build_vl_loader
    if name == "build_retrieval_loader":
        from umt.data.retrieval_loader import build_retrieval_loader

        return build_retrieval_loader
    if name == "clean_caption":
        from umt.data.captions import clean_caption

        return clean_caption
    raise AttributeError(f"module 'umt.data' has no attribute {name!r}")
