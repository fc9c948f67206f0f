"""``umt eval retrieval``: zero-shot (or fine-tuned) text-video retrieval of a Stage-2 model.

    umt eval retrieval --config b16 --model s3://b/runs/stage2-b16/checkpoints/step_00060000.pt \\
        --data s3://b/msrvtt-1k/dataset.json --output s3://b/evals/msrvtt-zs eval.k=128
    torchrun --nproc-per-node 8 -m umt.eval.retrieval_job --config b16 model.pretrained=... \\
        data.source=... train.output_dir=...

The official protocol (``umt.eval.retrieval``): 4 frames at the middle of equal segments,
Resize((224, 224)) bicubic, every caption, similarity ranking re-ranked on the top k by ITM.
Writes ``metrics.json`` (similarity-only and re-ranked results, under our names and the
official ``txt_r*`` = video-to-text / ``img_r*`` = text-to-video, with the protocol settings),
``summary.json`` and ``config.yaml`` to ``train.output_dir``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from umt.configs.finetune_retrieval import EvalRetrievalConfig
from umt.configs.loader import load_config
from umt.eval.job import run_evaluation


def build_model(cfg: Any, device):
    """The model of ``cfg.model`` with its checkpoint, in eval mode, and its tokenizer."""
    from umt.models import build_from_config
    from umt.models.text import load_tokenizer
    from umt.runtime.weights import read_checkpoint

    m = cfg.model
    model = build_from_config(m, read_checkpoint(m.pretrained), num_frames=cfg.eval.num_frames,
                              img_size=cfg.eval.img_size)
    return model.to(device).eval(), load_tokenizer(m.text_encoder)


def _body(cfg: EvalRetrievalConfig, dist) -> dict:
    from umt.eval.retrieval import run_retrieval

    model, tokenizer = build_model(cfg, dist.device)
    return run_retrieval(model, cfg.data.source, tokenizer, cfg.eval, dist=dist,
                         precision=cfg.train.precision)


def headline(result: dict) -> dict:
    best = result.get("itm") or result["similarity"]
    return {k: best[k] for k in ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "r_mean")}


def main(config: Optional[str] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg = load_config(EvalRetrievalConfig, "eval-retrieval", config, overrides)
    return run_evaluation("retrieval", cfg, _body, headline)


if __name__ == "__main__":
    from umt.runtime.entry import run_stage_module

    run_stage_module("eval-retrieval")
