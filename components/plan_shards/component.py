"""``plan_shards``: the inputs' content fingerprint and the parts of the shard fan-out."""

from components.base import component


@component
def plan_shards(
    input_videos: str = "",
    existing_dataset: str = "",
    classes: str = "",
    shard_parts: int = 1,
) -> list:
    """Reads the manifest, fingerprints its content and lists the shard parts; never cache it.

    The fingerprint (manifest bytes, or a folder's listing, and the class list) goes to every
    task that depends on the content: validate, each shard part and the merge take it as an
    input, so their cache keys and the dataset folder change when the manifest does, even at
    the same URI. Read-only; a bad manifest fails here, before any work.

    Args:
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos.
        existing_dataset: dataset.json of already sharded data: one part, no fingerprint.
        classes: Class-names file fixing label indices ("" = sorted label names).
        shard_parts: Parts to shard in parallel (1 to 10000).

    Returns:
        Output: One {"part", "num_parts", "fingerprint"} per part: the items of the shard loop.
    """
    from umt.pipeline import steps

    return steps.plan_shards(input_videos, existing_dataset, classes=classes,
                             shard_parts=shard_parts)
