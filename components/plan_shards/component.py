"""``plan_shards``: the parts of the shard fan-out, each with the input's content fingerprint."""

from components.base import component


@component
def plan_shards(
    input_videos: str = "",
    existing_dataset: str = "",
    shard_parts: int = 1,
    fingerprint: str = "",
) -> list:
    """Lists the shard parts: the items of the shard loop.

    Each item carries validate's content fingerprint of the input on to its shard task (and
    the merge), so their cache keys and the dataset folder change when the input does, even
    at the same URI. Reads nothing.

    Args:
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos.
        existing_dataset: dataset.json of already sharded data: one part.
        shard_parts: Parts to shard in parallel (1 to 10000).
        fingerprint: Content fingerprint of the input (validate's data_fingerprint).

    Returns:
        Output: One {"part", "num_parts", "fingerprint"} per part.
    """
    from umt.pipeline import steps

    return steps.plan_shards(input_videos, existing_dataset, shard_parts=shard_parts,
                             fingerprint=fingerprint)
