"""The video QA model (umt.models.qa): the official decoder initialisation from a Stage-2
checkpoint, causal / padding masks, the official loss and answer ranking computed by hand,
strict checkpoint loading, answer-length checks."""

import math

import pytest
import torch
import torch.nn.functional as F

from umt.models import create_model
from umt.models.checkpoint import CheckpointError
from umt.models.text import MINILM, load_tokenizer, tokenize

TINY = dict(num_frames=4, img_size=32, depth=2, num_heads=3, text_encoder=MINILM, fusion_layer=4)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MINILM)


def stage2_file(tmp_path, embed_dim):
    torch.manual_seed(0)
    vl = create_model("umt_vl_tiny_patch16_224", embed_dim=embed_dim, align_layers=1,
                      teacher_dim=16, proj_dim=32, **TINY)
    with torch.no_grad():  # a trained MLM head, so copying it is visible
        vl.text_encoder.cls.predictions.transform.dense.weight.normal_()
        vl.text_encoder.cls.predictions.bias.normal_()
    path = tmp_path / f"s2_{embed_dim}.pt"
    torch.save({"model": vl.state_dict()}, path)
    return vl, str(path)


@pytest.mark.parametrize("embed_dim", [96, 384])
def test_decoder_starts_from_the_fusion_layers_embeddings_and_mlm_head(tmp_path, embed_dim):
    vl, path = stage2_file(tmp_path, embed_dim)
    qa = create_model("umt_qa_tiny_patch16_224", pretrained=path, embed_dim=embed_dim, **TINY)
    enc, dec, fusion = vl.text_encoder.bert, qa.text_decoder, vl.text_encoder.fusion_layer
    assert len(dec.bert.encoder.layer) == 6 - fusion
    for i, layer in enumerate(dec.bert.encoder.layer):
        src = enc.encoder.layer[fusion + i]
        assert torch.equal(layer.attention.self.query.weight, src.attention.self.query.weight)
        assert torch.equal(layer.output.dense.weight, src.output.dense.weight)
        assert torch.equal(layer.crossattention.self.query.weight, src.crossattention.self.query.weight)
        # key/value read the video (vision width) in the encoder, the question (text width) here
        same = torch.equal(layer.crossattention.self.key.weight, src.crossattention.self.key.weight) \
            if layer.crossattention.self.key.weight.shape == src.crossattention.self.key.weight.shape else False
        assert same == (embed_dim == 384)
    assert torch.equal(dec.bert.embeddings.word_embeddings.weight, enc.embeddings.word_embeddings.weight)
    assert dec.bert.embeddings.word_embeddings.weight is not qa.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(dec.cls.predictions.transform.dense.weight,
                       vl.text_encoder.cls.predictions.transform.dense.weight)
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    # the question encoder is the whole Stage-2 BERT, the video encoder the Stage-2 one
    assert torch.equal(qa.text_encoder.encoder.layer[5].crossattention.self.key.weight,
                       enc.encoder.layer[5].crossattention.self.key.weight)
    assert torch.equal(qa.vision_encoder.encoder.blocks[1].mlp.fc1.weight,
                       vl.vision_encoder.encoder.blocks[1].mlp.fc1.weight)
    # a QA checkpoint round-trips strictly
    qpath = tmp_path / "qa.pt"
    torch.save({"model": qa.state_dict()}, qpath)
    again = create_model("umt_qa_tiny_patch16_224", pretrained=str(qpath), embed_dim=embed_dim, **TINY)
    for k, v in qa.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    sd = qa.state_dict()
    sd["text_decoder.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, qpath)
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra\.weight"):
        create_model("umt_qa_tiny_patch16_224", pretrained=str(qpath), embed_dim=embed_dim, **TINY)


@pytest.fixture(scope="module")
def qa_model():
    torch.manual_seed(0)
    return create_model("umt_qa_tiny_patch16_224", embed_dim=96, **TINY).eval()


def test_decoder_is_causal_and_ignores_question_padding(qa_model, tok):
    states = torch.randn(2, 6, 384)
    s_att = torch.tensor([[1, 1, 1, 1, 0, 0]] * 2)
    ids, att = tokenize(tok, ["red [SEP]", "blue [SEP]"], 5)
    with torch.no_grad():
        out = qa_model.text_decoder(ids, att, states, s_att)
        ids2 = ids.clone()
        ids2[:, 2] = 999
        states2 = states.clone()
        states2[:, 4:] = 100.0  # padded question tokens
        out2 = qa_model.text_decoder(ids2, att, states2, s_att)
    torch.testing.assert_close(out[:, :2], out2[:, :2])  # positions before the change
    assert not torch.allclose(out[:, 2], out2[:, 2])


def test_loss_is_the_official_weighted_sum_over_answer_tokens(qa_model, tok):
    video = torch.randn(2, 3, 4, 32, 32)
    q_ids, q_att = tokenize(tok, ["what colour is it", "which way"], 8)
    a_ids, a_att = tokenize(tok, ["red [SEP]", "light blue [SEP]", "left [SEP]"], 6)
    owner, w = torch.tensor([0, 0, 1]), torch.tensor([0.75, 0.25, 1.0])
    with torch.no_grad():
        loss = qa_model(video, q_ids, q_att, a_ids, a_att, owner, w)
        states = qa_model.encode_question(q_ids, q_att, qa_model.vision_encoder(video))
        logits = qa_model.text_decoder(a_ids, a_att, states[owner], q_att[owner])
    expected = 0.0
    for a in range(3):
        n = int(a_att[a].sum())
        # next-token CE over [answer tokens, SEP, SEP]: positions 0..n-2 predict 1..n-1
        nll = -sum(F.log_softmax(logits[a, j], -1)[a_ids[a, j + 1]] for j in range(n - 1))
        expected += float(w[a]) * float(nll)
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)


def test_rank_answers_is_the_official_rank_answer_with_k_clamped(qa_model, tok):
    from umt.models.qa_answers import tokenize_answers

    answers = ["red", "green", "blue", "light blue", "left"]
    a_ids, a_att = tokenize_answers(tok, answers, 6)
    states, s_att = torch.randn(3, 5, 384), torch.ones(3, 5, dtype=torch.long)
    with torch.no_grad():
        ids, probs = qa_model.rank_answers(states, s_att, a_ids, a_att, k=128, chunk=4)
        assert ids.shape == (3, 5)  # k clamped to the list
        first = F.softmax(qa_model.text_decoder(a_ids[:1, :1].expand(3, 1), torch.ones(3, 1, dtype=torch.long),
                                                states, s_att)[:, 0], -1)
        for q in range(3):
            nll = qa_model.answer_nll(a_ids, a_att, states[q:q + 1].expand(5, -1, -1),
                                      s_att[q:q + 1].expand(5, -1))
            score = first[q, a_ids[:, 1]].log() - nll
            assert ids[q].tolist() == torch.argsort(score, descending=True).tolist()
            torch.testing.assert_close(probs[q], F.softmax(score, -1)[ids[q]], atol=1e-5, rtol=1e-4)
        top2, _ = qa_model.rank_answers(states, s_att, a_ids, a_att, k=2)
        assert top2.shape == (3, 2)


def test_answers_longer_than_the_decoder_holds_are_an_error(tok):
    from umt.models.qa_answers import AnswerFits, tokenize_answers

    with pytest.raises(ValueError, match=r"qa.max_answer_len=5 .*'a very long answer' \(7\).*=7"):
        tokenize_answers(tok, ["red", "a very long answer"], 5)
    fits = AnswerFits(tok, 5)
    assert fits("red") and fits("light blue") and not fits("a very long answer")
    assert math.isfinite(len(tokenize_answers(tok, ["a very long answer"], 7)[0][0]))
