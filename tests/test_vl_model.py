"""Stage-2 model: API shapes, the real MiniLM text side, fusion with a narrower ViT, temperature,
checkpoints (strict errors, Stage-1 init, own round trip, BERT file layouts)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from umt.losses import mlm_mask
from umt.models import CheckpointError, create_model
from umt.models.text import MINILM, BertTextEncoder, load_tokenizer, resolve_text_encoder, tokenize

VISION = dict(embed_dim=64, depth=2, num_heads=2, img_size=112, num_frames=4, teacher_dim=32, align_layers=2)
CAPTIONS = ["a man plays the guitar", "two dogs run on a beach at sunset", "a cooking show", "people dance"]


def build(**kw):
    return create_model("umt_vl_tiny_patch16_224", **{**VISION, **kw})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build().eval()


@pytest.fixture(scope="module")
def batch():
    tok = load_tokenizer(MINILM)
    ids, att = tokenize(tok, CAPTIONS, 32)
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 3, 4, 112, 112, generator=g)
    mask = torch.ones(4, 4, 49, dtype=torch.bool)
    for b in range(4):
        for t in range(4):
            mask[b, t, torch.randperm(49, generator=g)[:10]] = False
    return dict(tok=tok, ids=ids, att=att, video=video, mask=mask.flatten(1), idx=torch.arange(4))


def test_registered_in_umt_and_timm():
    for size in ("tiny", "small", "base", "large"):
        assert f"umt_vl_{size}_patch16_224" in timm.list_models("umt_vl_*")
    m = timm.create_model("umt_vl_tiny_patch16_224", **VISION)
    assert (m.vision_width, m.text_width, m.proj_dim, m.text_encoder.fusion_layer) == (64, 384, 512, 3)
    assert m.text_encoder.name == MINILM


def test_fusion_layer_must_leave_text_and_fusion_layers():
    with pytest.raises(ValueError, match="fusion_layer must be in 1..5"):
        build(fusion_layer=9)  # the base preset's value with a 6-layer text encoder


def test_minilm_text_side_is_transformers_bert(model, batch):
    """The text-only layers hold MiniLM's real weights: their output equals transformers'
    BertModel at layer ``fusion_layer``; the fusion layers' own weights are MiniLM's too."""
    from safetensors.torch import load_file
    from transformers import BertModel

    path = resolve_text_encoder(MINILM)
    ref = BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden, feat = model.encode_text(batch["ids"], batch["att"])
        want = ref(input_ids=batch["ids"], attention_mask=batch["att"], output_hidden_states=True).hidden_states[3]
    torch.testing.assert_close(hidden, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(feat, F.normalize(model.text_proj(hidden[:, 0]), dim=-1))
    sd = load_file(f"{path}/model.safetensors")
    te = model.text_encoder.state_dict()
    for k in ("encoder.layer.5.attention.self.query.weight", "encoder.layer.4.output.dense.weight",
              "embeddings.word_embeddings.weight"):
        assert torch.equal(te[f"bert.{k}"], sd[k])


def test_cross_attention_reads_the_vision_width(model):
    layer = model.text_encoder.bert.encoder.layer[3]
    assert not hasattr(model.text_encoder.bert.encoder.layer[2], "crossattention")
    assert layer.crossattention.self.key.weight.shape == (384, 64)
    assert layer.crossattention.self.value.weight.shape == (384, 64)
    assert layer.crossattention.self.query.weight.shape == (384, 384)


def test_mlm_head_fresh_and_tied(model):
    pred = model.text_encoder.cls.predictions
    assert pred.decoder.weight is model.text_encoder.bert.embeddings.word_embeddings.weight
    assert pred.decoder.bias is pred.bias
    assert torch.equal(pred.bias, torch.zeros_like(pred.bias))  # MiniLM has no MLM head


def test_api_shapes_and_unit_features(model, batch):
    v, m = batch["video"], batch["mask"]
    with torch.no_grad():
        tokens, feat = model.encode_video(v, mask=m)
        assert tokens.shape == (4, 40, 64) and feat.shape == (4, 512)
        full, per_frame = model.encode_video(v, per_frame=True)
        assert full.shape == (4, 196, 64) and per_frame.shape == (4, 4, 512)
        torch.testing.assert_close(per_frame.norm(dim=-1), torch.ones(4, 4))
        _, per_frame_masked = model.encode_video(v, mask=m, per_frame=True)  # 10 visible per frame
        assert per_frame_masked.shape == (4, 4, 512)
        hidden, tfeat = model.encode_text(batch["ids"], batch["att"])
        assert hidden.shape == (4, 32, 384) and tfeat.shape == (4, 512)
        torch.testing.assert_close(tfeat.norm(dim=-1), torch.ones(4))
        assert model.itm_logits(tokens, hidden, batch["att"]).shape == (4, 2)
        logits = model.mlm_logits(batch["ids"], batch["att"], tokens)
        assert logits.shape == (4, 32, 30522)
        pos = batch["att"].bool() & (torch.rand(4, 32) < 0.3)
        torch.testing.assert_close(model.mlm_logits(batch["ids"], batch["att"], tokens, pos), logits[pos])


def test_one_video_against_many_captions_projects_its_tokens_once(model, batch):
    """ITM re-ranking scores one video's tokens (expanded, not copied) against k captions: the
    cross-attention key/value projections run once on it and give the copied input's numbers."""
    from umt.models.text import _ContextLinear

    with torch.no_grad():
        tokens, _ = model.encode_video(batch["video"][:1], per_frame=True)  # [1, N, C]
        hidden, _ = model.encode_text(batch["ids"], batch["att"])
        layers = [m for m in model.modules() if isinstance(m, _ContextLinear)]
        assert layers  # the key and value projections of every fusion layer
        expanded = model.itm_logits(tokens.expand(4, -1, -1), hidden, batch["att"])
        copied = model.itm_logits(tokens.repeat(4, 1, 1), hidden, batch["att"])
        torch.testing.assert_close(expanded, copied)
        # computed for one row and broadcast (a plain nn.Linear returns 4 computed rows)
        assert all(layer(tokens.expand(4, -1, -1)).stride(0) == 0 for layer in layers)
        assert layers[0](tokens.repeat(4, 1, 1)).stride(0) != 0


def test_per_frame_pooling_of_an_unbalanced_mask_is_refused(model, batch):
    m = batch["mask"].clone().view(4, 4, 49)
    m[0, 0] = True
    m[0, 0, :20] = False   # frame 0 shows 20 tokens,
    m[0, 1] = True         # frame 1 none: still 40 per clip
    with pytest.raises(ValueError, match="visible tokens in every frame"):
        model.encode_video(batch["video"], mask=m.flatten(1), per_frame=True)


def test_images_use_the_first_rows_of_the_position_table(model):
    enc = model.vision_encoder.encoder
    img = torch.randn(2, 3, 1, 112, 112)
    want = enc.patch_embed(img) + enc.pos_embed[:, :49]
    torch.testing.assert_close(enc.embed(img), want)
    with torch.no_grad():
        tokens, feat = model.encode_video(img, per_frame=True)
    assert tokens.shape == (2, 49, 64) and feat.shape == (2, 1, 512)
    with pytest.raises(ValueError, match="built for 4x112x112"):
        enc.embed(torch.randn(1, 3, 2, 112, 112))


def test_one_vision_pass_gives_tokens_features_and_uta(model, batch):
    v, m = batch["video"], batch["mask"]
    with torch.no_grad():
        tokens, feat, uta = model.forward_vision(v, m)
        t2, f2 = model.encode_video(v, mask=m)
        stage1 = model.vision_encoder(v, m)  # the Stage-1 student's own forward
    torch.testing.assert_close(tokens, t2)
    torch.testing.assert_close(feat, f2)
    torch.testing.assert_close(uta, stage1)
    assert uta.shape == (2, 4, 40, 32)
    assert all(h.norm.eps == 1e-5 for h in model.vision_encoder.clip_decoder)  # official Stage 2


def test_forward_uses_every_parameter_and_losses_fall_apart_cleanly(batch):
    """One forward with all four losses reaches every parameter (DDP needs no unused ones)."""
    from umt.losses import mlm_loss, uta_loss, vtc_loss, vtm_loss

    torch.manual_seed(0)
    m = build(drop_path_rate=0.1).train()
    tok = batch["tok"]
    mids, labels = mlm_mask(batch["ids"], tok.vocab_size, tok.pad_token_id, tok.cls_token_id,
                            tok.mask_token_id, generator=torch.Generator().manual_seed(0))
    out = m(batch["video"], batch["ids"], batch["att"], batch["idx"], mask=batch["mask"],
            mlm_input_ids=mids, mlm_labels=labels, generator=torch.Generator().manual_seed(0))
    assert out.vtm_logits.shape == (12, 2) and out.vtm_skipped == 0
    assert out.mlm_logits.shape == (int((labels != -100).sum()), 30522)
    teacher = F.normalize(torch.randn(2, 4, 196, 32), dim=-1)
    loss = (vtc_loss(out.video_feat, out.text_feat, batch["idx"], out.temp) + vtm_loss(out.vtm_logits)
            + mlm_loss(out.mlm_logits, out.mlm_targets) + uta_loss(out.uta, teacher, batch["mask"]))
    loss.backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []
    assert m.temp.grad is not None and m.temp.grad.abs() > 0


def test_a_batch_without_negatives_skips_vtm_but_keeps_the_graph(batch):
    from umt.losses import vtm_loss

    m = build().eval()
    out = m(batch["video"][:1], batch["ids"][:1], batch["att"][:1], batch["idx"][:1], mask=batch["mask"][:1])
    assert out.vtm_skipped == 1 and out.vtm_logits.shape == (0, 2)
    loss = vtm_loss(out.vtm_logits)
    assert loss.item() == 0.0
    loss.backward()
    assert m.itm_head.weight.grad is not None  # in the graph, gradient zero


def test_temperature_clamped_fp32_and_decayed(model, batch):
    assert model.temp.dtype == torch.float32 and isinstance(model.temp, torch.nn.Parameter)
    assert build().temp.item() == pytest.approx(0.07)
    assert model.weight_decay_anyway() == {"temp"}
    for start, want in ((5.0, 0.5), (1e-6, 0.001), (0.2, 0.2)):
        with torch.no_grad():
            model.temp.fill_(start)
            out = model(batch["video"][:2], batch["ids"][:2], batch["att"][:2], batch["idx"][:2],
                        mask=batch["mask"][:2], uta=False, vtm=False)
        assert out.temp.item() == pytest.approx(want) and model.temp.item() == pytest.approx(want)
    with torch.no_grad():
        model.temp.fill_(0.07)


def test_grad_checkpointing_same_result(batch):
    torch.manual_seed(0)
    m = build(drop_path_rate=0.1).train()
    grads = []
    for enable in (False, True):
        m.zero_grad()
        m.set_grad_checkpointing(enable)
        torch.manual_seed(1)  # the same dropout / drop-path draws (checkpointing replays them)
        out = m(batch["video"][:2], batch["ids"][:2], batch["att"][:2], batch["idx"][:2], mask=batch["mask"][:2],
                negatives=None, generator=torch.Generator().manual_seed(0))
        (out.video_feat.sum() + out.text_feat.sum() + out.vtm_logits.sum() + out.uta.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_tokenize_pads_and_truncates(batch):
    ids, att = tokenize(batch["tok"], ["hi", " ".join(["word"] * 80)], 32)
    assert ids.shape == (2, 32) and att[0].sum() == 3 and att[1].sum() == 32
    assert ids[0, 0] == batch["tok"].cls_token_id and ids[1, -1] == batch["tok"].sep_token_id


# --------------------------------------------------------------------------- checkpoints
def save(path, obj):
    torch.save(obj, path)
    return str(path)


def outputs(m, batch):
    with torch.no_grad():
        tokens, vfeat = m.encode_video(batch["video"], mask=batch["mask"])
        hidden, tfeat = m.encode_text(batch["ids"], batch["att"])
        return vfeat, tfeat, m.itm_logits(tokens, hidden, batch["att"]), m.mlm_logits(batch["ids"], batch["att"], tokens)[:, :3]


def test_own_stage2_checkpoint_round_trip(tmp_path, batch):
    from umt.models import export_official

    model = build().eval()
    with torch.no_grad():
        model.text_encoder.cls.predictions.bias.normal_()  # make the (tied) head non-trivial
    for name, sd in (("ours", model.state_dict()), ("official", export_official(model))):
        path = save(tmp_path / f"{name}.pth", {"model": sd, "step": 3})
        m2 = build(pretrained=path).eval()
        for a, b in zip(outputs(model, batch), outputs(m2, batch)):
            torch.testing.assert_close(a, b)
        assert m2.text_encoder.cls.predictions.decoder.bias is m2.text_encoder.cls.predictions.bias
    assert "text_encoder.bert.embeddings.position_ids" in export_official(model)


def test_own_stage2_checkpoint_initialises_the_finetune_backbones(tmp_path, model):
    """Our Stage-2 layout is the official one, so the fine-tunes' loaders take its video part."""
    path = save(tmp_path / "s2.pth", {"model": model.state_dict()})
    dims = {k: v for k, v in VISION.items() if k not in ("teacher_dim", "align_layers")}
    vit = create_model("umt_vit_tiny_patch16_224", pretrained=path, num_classes=3, **dims)
    assert torch.equal(vit.blocks[1].mlp.fc2.weight, model.vision_encoder.encoder.blocks[1].mlp.fc2.weight)
    student = create_model("umt_pretrain_vit_tiny_patch16_224", pretrained=path, **VISION)
    assert torch.equal(student.clip_decoder[1].norm.bias, model.vision_encoder.clip_decoder[1].norm.bias)


def test_stage2_layout_differences_handled(tmp_path, model, batch):
    from umt.models import export_official

    sd = export_official(model)
    sd["clip_teacher.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)  # dropped
    for k in [k for k in sd if k.endswith("LayerNorm.weight") and k.startswith("text_encoder.")][:3]:
        sd[k[:-len("weight")] + "gamma"] = sd.pop(k)  # old names
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}  # an fp16 file
    m2 = build(pretrained=save(tmp_path / "s2.pth", {"module": sd})).eval()
    torch.testing.assert_close(m2.temp, model.temp)
    assert torch.equal(m2.itm_head.weight, model.itm_head.weight.half().float())


def test_retrieval_finetuned_layout_loads_with_a_fresh_mlm_head(tmp_path, model):
    """Official downstream models use BertModel: ``text_encoder.embeddings.*`` and no MLM head."""
    sd = {k.replace("text_encoder.bert.", "text_encoder."): v for k, v in model.state_dict().items()
          if not k.startswith("text_encoder.cls.")}
    m2 = build(pretrained=save(tmp_path / "ret.pth", {"model": sd}))
    assert torch.equal(m2.text_encoder.bert.encoder.layer[4].crossattention.self.key.weight,
                       model.text_encoder.bert.encoder.layer[4].crossattention.self.key.weight)
    assert m2.text_encoder.cls.predictions.decoder.weight is m2.text_encoder.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("edit,match", [
    (lambda sd: sd.pop("text_proj.weight"), r"missing keys \(1\): \['text_proj.weight'\]"),
    (lambda sd: sd.__setitem__("text_encoder.bert.encoder.layer.2.crossattention.self.key.bias", torch.zeros(384)),
     "unexpected keys.*layer.2.crossattention"),
    (lambda sd: sd.__setitem__("vision_proj.weight", torch.zeros(48, 64)), "vision_proj.weight: file \\(48, 64\\)"),
    (lambda sd: sd.__setitem__("text_encoder.cls.predictions.decoder.weight", torch.zeros(30522, 384)),
     "decoder.weight differs from bert.embeddings.word_embeddings.weight"),
    (lambda sd: sd.__setitem__("text_encoder.bert.embeddings.position_ids", torch.arange(512).flip(0)[None]),
     "position_ids is not 0..511"),
])
def test_strict_errors_name_the_keys(tmp_path, model, edit, match):
    from umt.models import export_official

    sd = export_official(model)
    edit(sd)
    with pytest.raises(CheckpointError, match=match):
        build(pretrained=save(tmp_path / "bad.pth", {"model": sd}))


def test_other_fusion_depth_is_a_named_mismatch(tmp_path, model):
    path = save(tmp_path / "s2.pth", {"model": model.state_dict()})
    with pytest.raises(CheckpointError, match="layer.2.crossattention"):
        build(pretrained=path, fusion_layer=2)


def test_stage1_checkpoint_initialises_the_video_encoder_only(tmp_path, model):
    torch.manual_seed(5)
    s1 = create_model("umt_pretrain_vit_tiny_patch16_224", **{k: v for k, v in VISION.items()})
    m2 = build(pretrained=save(tmp_path / "s1.pth", {"model": s1.state_dict()}))
    assert torch.equal(m2.vision_encoder.encoder.blocks[1].attn.qkv.weight, s1.encoder.blocks[1].attn.qkv.weight)
    assert torch.equal(m2.vision_encoder.clip_decoder[0].head.weight, s1.clip_decoder[0].head.weight)
    assert torch.equal(m2.vision_encoder.pool_norm.weight, torch.ones(64))  # fresh, as officially
    assert torch.equal(m2.text_encoder.bert.encoder.layer[0].attention.self.query.weight,
                       model.text_encoder.bert.encoder.layer[0].attention.self.query.weight)  # MiniLM
    ft = create_model("umt_vit_tiny_patch16_224", num_classes=3, **{k: v for k, v in VISION.items()
                                                                    if k not in ("teacher_dim", "align_layers")})
    with pytest.raises(CheckpointError, match="fine-tuned classifier cannot initialise"):
        build(pretrained=save(tmp_path / "ft.pth", {"model": ft.state_dict()}))


def hub_style_bert(tmp_path, with_head: bool):
    """MiniLM saved as the hub's bert-base-uncased file is laid out: ``bert.`` prefix, pooler,
    old gamma/beta LayerNorm names, the NSP head, and (optionally) an MLM head."""
    from safetensors.torch import load_file

    src = resolve_text_encoder(MINILM)
    sd = {}
    for k, v in load_file(f"{src}/model.safetensors").items():
        k = "bert." + k
        if k.endswith("LayerNorm.weight"):
            k = k[:-len("weight")] + "gamma"
        elif k.endswith("LayerNorm.bias"):
            k = k[:-len("bias")] + "beta"
        sd[k] = v
    sd["cls.seq_relationship.weight"] = torch.zeros(2, 384)
    sd["cls.seq_relationship.bias"] = torch.zeros(2)
    if with_head:
        sd["cls.predictions.transform.dense.weight"] = torch.randn(384, 384)
        sd["cls.predictions.transform.dense.bias"] = torch.randn(384)
        sd["cls.predictions.transform.LayerNorm.gamma"] = torch.randn(384)
        sd["cls.predictions.transform.LayerNorm.beta"] = torch.randn(384)
        sd["cls.predictions.bias"] = torch.randn(30522)
        sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"]
    d = tmp_path / ("head" if with_head else "nohead")
    d.mkdir()
    torch.save(sd, d / "pytorch_model.bin")
    for f in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).write_text(open(f"{src}/{f}").read())
    return str(d), sd


def test_hub_bert_layout_loads(tmp_path):
    path, sd = hub_style_bert(tmp_path, with_head=True)
    enc = BertTextEncoder.from_pretrained(path, fusion_layer=3, cross_width=64)
    assert torch.equal(enc.cls.predictions.bias, sd["cls.predictions.bias"])
    assert torch.equal(enc.cls.predictions.transform.LayerNorm.weight, sd["cls.predictions.transform.LayerNorm.gamma"])
    assert torch.equal(enc.bert.encoder.layer[1].output.LayerNorm.bias, sd["bert.encoder.layer.1.output.LayerNorm.beta"])
    report = enc.load_bert_weights(path)
    assert "bert.pooler.dense.weight" in report["dropped"] and "cls.seq_relationship.weight" in report["dropped"]
    assert all(".crossattention." in k for k in report["fresh"])


def test_bert_file_errors(tmp_path):
    path, sd = hub_style_bert(tmp_path, with_head=False)
    sd["bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(10, 10)
    sd["bert.encoder.layer.9.output.dense.weight"] = torch.zeros(2)
    torch.save(sd, f"{path}/pytorch_model.bin")
    with pytest.raises(CheckpointError, match="unexpected keys.*layer.9.*\n.*shape mismatches.*layer.0.attention.self.query.weight"):
        BertTextEncoder.from_pretrained(path, fusion_layer=3, cross_width=64)
    from umt.models.text import TextEncoderError

    with pytest.raises(TextEncoderError, match="cannot load the text encoder config"):
        BertTextEncoder.from_pretrained(str(tmp_path / "nowhere"), fusion_layer=3, cross_width=64)
