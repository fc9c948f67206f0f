"""Stage 1 on real shards: synthetic mp4s -> umt shard -> WebDataset loader -> training."""

import json

from umt import storage
from umt.data.shard import shard_dataset
from umt.train.stage1 import main


def test_stage1_trains_from_local_shards(tmp_path, synthetic_shards):
    out = tmp_path / "run"
    summary = main("tiny", [f"data.source={synthetic_shards}", "data.num_workers=1",
                            f"train.output_dir={out}", "train.steps=4", "train.log_every=2"])
    assert summary["steps"] == 4 and summary["final_loss"] is not None
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["samples_skipped"] == 0 and rec["clips_per_s"] > 0


def test_stage1_from_s3_shards_to_s3_checkpoints(s3_bucket, synthetic_manifest):
    info = shard_dataset(synthetic_manifest, f"{s3_bucket}/shards", samples_per_shard=8, workers=1,
                         progress=False)
    summary = main("tiny", [f"data.source={info.location}", "data.num_workers=0",
                            f"train.output_dir={s3_bucket}/runs/a", "train.steps=2"])
    assert summary["checkpoint"].startswith(f"{s3_bucket}/runs/a/checkpoints/")
    assert storage.exists(summary["checkpoint"])
