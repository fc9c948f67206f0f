"""``merge_shards``: the shard parts -> one dataset.json (``umt shard merge``)."""

from kfp.dsl import Dataset, Output

from components.base import component


@component
def merge_shards(
    dataset: Output[Dataset],
    output_prefix: str,
    shard_plan: list,
    input_videos: str = "",
    existing_dataset: str = "",
    classes: str = "",
    samples_per_shard: int = 1000,
    short_side: int = 320,
):
    """Joins the parts that the shard tasks wrote into the one dataset.json the stages read.

    Refuses a missing, duplicated or inconsistent part (class list, manifest, settings). With
    one part, its dataset.json is published as it is; with existing_dataset, that one.

    Args:
        output_prefix: Folder or s3:// prefix; the shards are under datasets/.
        shard_plan: The parts (plan_shards' output): their count and the content fingerprint.
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos.
        existing_dataset: dataset.json of already sharded data: described, not merged.
        classes: Class-names file fixing label indices ("" = sorted label names).
        samples_per_shard: Samples per shard.
        short_side: Short side (pixels) videos are transcoded to.

    Returns:
        dataset: dataset.json (shard URIs absolute) with num_shards, num_samples, num_failed,
            classes and the canonical dataset_json URI in its metadata.
    """
    from umt.pipeline import steps

    steps.merge_shards(input_videos, existing_dataset, output_prefix, shard_plan=shard_plan,
                       classes=classes, samples_per_shard=samples_per_shard,
                       short_side=short_side, dataset=dataset)
