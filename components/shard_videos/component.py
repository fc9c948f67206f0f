"""``shard_videos``: videos -> WebDataset shards + dataset.json (``umt shard``)."""

from kfp.dsl import Dataset, Output

from components.base import component


@component
def shard_videos(
    dataset: Output[Dataset],
    output_prefix: str,
    input_videos: str = "",
    existing_dataset: str = "",
    classes: str = "",
    samples_per_shard: int = 1000,
    short_side: int = 320,
    fingerprint: str = "",
    part: int = 0,
    num_parts: int = 1,
):
    """Validates, transcodes and shards videos to WebDataset; resumes verified shards.

    The shards go to <output_prefix>/datasets/<input>-<hash>/ (never through KFP's artifact
    store); the Dataset artifact is the small dataset.json with counts in its metadata. With
    num_parts > 1 only part `part` of the inputs (by a hash of each input's id) goes to its
    part-IIIII-of-NNNNN/ folder there, and the artifact is that part's part.json; merge_shards
    joins the parts.

    Args:
        output_prefix: Folder or s3:// prefix; the shards go under datasets/.
        input_videos: Manifest (.csv/.jsonl), folder or s3:// prefix of videos.
        existing_dataset: dataset.json of already sharded data: described, not re-sharded.
        classes: Class-names file fixing label indices ("" = sorted label names).
        samples_per_shard: Samples per shard.
        short_side: Short side (pixels) videos are transcoded to (never upscaled).
        fingerprint: Content fingerprint of the input (validate's, through plan_shards; "" =
            computed here): part of the shard folder, so videos edited in place are sharded
            anew; an input that no longer matches it is refused.
        part: Which part to shard (0-based), of num_parts.
        num_parts: Parts the inputs are split into (1 = all inputs, one dataset.json).

    Returns:
        dataset: dataset.json (shard URIs absolute) with num_shards, num_samples, num_failed,
            classes and the canonical dataset_json URI in its metadata.
    """
    from umt.pipeline import steps

    steps.shard(input_videos, existing_dataset, output_prefix, classes=classes,
                samples_per_shard=samples_per_shard, short_side=short_side, part=part,
                num_parts=num_parts, fingerprint=fingerprint, dataset=dataset)
