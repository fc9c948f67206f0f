"""Training entry points, one module per job, on a shared loop.

``STAGES`` is the registry the launcher reads: any stage listed here becomes a PyTorchJob
(``torchrun -m <module> --config <preset|yaml> key=value ...``) with no new launcher code.
Each module defines ``CONFIG_SCHEMA`` (its dataclass) and ``main(config, overrides)``.
"""

STAGES: dict[str, str] = {
    "stage1": "umt.train.stage1",
}

__all__ = ["STAGES"]
