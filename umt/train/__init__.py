"""Training entry points, one module per job, on a shared loop.

``STAGES`` is the registry the launcher reads: any stage listed here becomes a PyTorchJob
(``torchrun -m <module> --config <preset|yaml> key=value ...``) with no new launcher code.
Each module defines ``CONFIG_SCHEMA`` (its dataclass) and ``main(config, overrides)``.
Evaluations (``eval-<task>``) are stages too -- one process, torchrun or a PyTorchJob -- and
appear on the command line as ``umt eval <task>``.
"""

STAGES: dict[str, str] = {
    "stage1": "umt.train.stage1",
    "stage2": "umt.train.stage2",
    "eval-retrieval": "umt.eval.retrieval_job",
    "finetune-retrieval": "umt.train.finetune_retrieval",
    "eval-mc": "umt.eval.mc_job",
    "finetune-qa": "umt.train.finetune_qa",
    "eval-qa": "umt.eval.qa_job",
    "finetune-action": "umt.train.finetune_action",
    "eval-action": "umt.eval.action_job",
}


def is_evaluation(stage: str) -> bool:
    return stage.startswith("eval-")

__all__ = ["STAGES", "is_evaluation"]
