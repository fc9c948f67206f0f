"""The pipeline's KFP components: one folder per step, ``component.py`` + compiled
``component.yaml`` (reuse the YAML with ``kfp.components.load_component_from_file``; see
README.md). Regenerate the YAML files with ``python -m components``.
"""

from components.cleanup.component import cleanup
from components.credentials.component import credentials
from components.evaluate.component import evaluate
from components.finetune.component import finetune
from components.merge_shards.component import merge_shards
from components.plan_shards.component import plan_shards
from components.pretrain_stage1.component import pretrain_stage1
from components.pretrain_stage2.component import pretrain_stage2
from components.report.component import report
from components.shard_videos.component import shard_videos
from components.validate.component import validate

# step folder -> component, in DAG order
COMPONENTS = {
    "credentials": credentials,
    "validate": validate,
    "plan_shards": plan_shards,
    "shard_videos": shard_videos,
    "merge_shards": merge_shards,
    "pretrain_stage1": pretrain_stage1,
    "pretrain_stage2": pretrain_stage2,
    "finetune": finetune,
    "evaluate": evaluate,
    "report": report,
    "cleanup": cleanup,
}

__all__ = ["COMPONENTS", *COMPONENTS]
