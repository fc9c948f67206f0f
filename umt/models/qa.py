"""Video question answering (official ``multi_modality/models/umt_qa.py`` ``UMT_QA``).

Three parts, parameter names as the official QA model's, so its checkpoints load as they are:

- ``vision_encoder.encoder``: the video ViT (all tokens, final norm; no alignment heads, no
  ``pool_norm``: the official QA encoder is built without them);
- ``text_encoder``: the question encoder, the whole BERT (``embeddings``, ``encoder.layer.*``)
  in the official multimodal mode: layers ``< fusion_layer`` read the question, layers
  ``>= fusion_layer`` also cross-attend to every video token;
- ``text_decoder``: the answer decoder (official ``BertLMHeadModel`` with ``L - fusion_layer``
  layers and ``fusion_layer = 0``): causal self-attention, cross-attention to the question
  encoder's last hidden states under the question's padding mask, the MLM-style ``cls`` head
  (decoder weight tied to its own word embeddings).

Initialisation from a Stage-2 checkpoint (official ``setup_model(has_decoder=True)``):
decoder layer ``i`` <- encoder layer ``fusion_layer + i`` (so its cross-attention starts from
the video cross-attention), decoder embeddings <- the encoder's, ``text_decoder.cls`` <- the
Stage-2 MLM head; ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, the alignment heads
and ``pool_norm`` are dropped. When the video and text widths differ (our tiny preset: a
96-wide ViT and 384-wide MiniLM) the video cross-attention's key/value projections cannot serve
as the decoder's (which read the 384-wide question states): those stay freshly initialised and
are listed in the load report. For B/16 (768/768) and L/16 (1024/1024) every weight is copied,
as officially.

Training (``forward``): next-token cross-entropy summed over each answer's tokens, times the
answer's frequency weight, summed and divided by the number of questions (official). Inference
(``rank_answers``, official ``rank_answer``): every answer of the global list is scored by the
first-token probability after ``[CLS]``; the top ``k`` are re-scored by ``log p(first) -
NLL(all answer tokens)`` (the first token counted twice, both ``[SEP]`` included, as
officially) and the best is the prediction.

The official ``UMT_QA.encode_vision`` passes five positional arguments to a four-argument
``forward`` and raises ``TypeError`` at HEAD: this follows its design, not that bug.
"""

from __future__ import annotations

import copy
import logging
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from umt.models.checkpoint import (
    CheckpointError,
    LoadReport,
    Pretrained,
    check_strict,
    state_dict_of,
)
from umt.models.text import (
    _Bert,
    bert_config,
    init_bert_weights,
    normalise_bert_keys,
    read_bert_state_dict,
    resolve_tied_decoder,
)
from umt.models.vit import VisionTransformer

log = logging.getLogger(__name__)

# Stage-2 parts the QA model does not have (official: deleted / never built).
_DROPPED = ("vision_encoder.clip_decoder.", "vision_encoder.pool_norm.", "vision_proj.",
            "text_proj.", "itm_head.", "clip_teacher.")


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool = False) -> torch.Tensor:
    """``[B, L]`` (1 = token, 0 = padding) -> additive ``[B, 1, 1, L]`` (official ``(1 - m) *
    -10000``); ``causal``: ``[B, 1, L, L]``, each position sees itself and earlier tokens only."""
    m = attention_mask[:, None, None, :].to(dtype)
    if causal:
        n = attention_mask.shape[1]
        m = m * torch.tril(torch.ones(n, n, device=attention_mask.device, dtype=dtype))[None, None]
    return (1.0 - m) * -10000.0


def run_layers(layers, x: torch.Tensor, mask: torch.Tensor, context: Optional[torch.Tensor] = None,
               context_mask: Optional[torch.Tensor] = None, checkpointing: bool = False) -> torch.Tensor:
    """``BertFusionLayer``s in order on ``x [B, L, W]`` (additive masks, see above)."""
    for layer in layers:
        if checkpointing:
            x = checkpoint(layer, x, mask, context, context_mask, use_reentrant=False)
        else:
            x = layer(x, mask, context, context_mask)
    return x


class VideoEncoder(nn.Module):
    """``vision_encoder``: ``encoder`` = the video ViT on every token with its final norm.

    The position table is computed for this grid directly (a 12-frame model extends the 1-D
    sinusoid table, as the official multi-modality code with ``ckpt_num_frame=-1``)."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, tubelet_size: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float):
        super().__init__()
        grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.encoder = VisionTransformer(
            img_size=img_size, patch_size=patch_size, num_frames=num_frames,
            tubelet_size=tubelet_size, num_classes=0, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
            use_mean_pooling=False, pretrain_grid=grid)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> tokens ``[B, T*H*W/p^2, D]`` (official ``vision_embeds``)."""
        return self.encoder.forward_features(video)


class AnswerDecoder(nn.Module):
    """``text_decoder``: ``bert`` (embeddings + layers that all cross-attend) and ``cls``."""

    def __init__(self, config, cross_width: int):
        super().__init__()
        self.config = config
        self.bert = _Bert(config, fusion_layer=0, cross_width=cross_width)
        self.cls = BertOnlyMLMHead(config)
        self.tie_weights()

    def tie_weights(self) -> None:
        pred = self.cls.predictions
        pred.decoder.weight = self.bert.embeddings.word_embeddings.weight
        pred.decoder.bias = pred.bias

    def forward(self, ids: torch.Tensor, att: torch.Tensor, states: torch.Tensor,
                states_att: torch.Tensor, checkpointing: bool = False) -> torch.Tensor:
        """``ids``/``att [A, La]``, question ``states [A, Lq, W]`` / ``states_att [A, Lq]`` ->
        vocabulary logits ``[A, La, V]`` (position j predicts token j + 1)."""
        x = self.bert.embeddings(input_ids=ids)
        x = run_layers(self.bert.encoder.layer, x, additive_mask(att, x.dtype, causal=True),
                       states, additive_mask(states_att, x.dtype), checkpointing)
        return self.cls(x)


class VideoQAModel(nn.Module):
    """Video ViT + question encoder (BERT with fusion layers) + answer decoder.

    Vision arguments as ``VisionLanguageModel``'s; ``text_encoder``: a BERT directory or hub id
    (config, weights, tokenizer); ``load_text_weights=False`` builds from its config only (a
    checkpoint follows); ``text_dropout`` overrides BERT's dropout probabilities.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 12,
                 tubelet_size: int = 1, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 text_encoder: str = "bert-base-uncased", fusion_layer: int = 9,
                 load_text_weights: bool = True, text_dropout: Optional[float] = None):
        super().__init__()
        config = bert_config(text_encoder)
        if text_dropout is not None:
            config.hidden_dropout_prob = config.attention_probs_dropout_prob = float(text_dropout)
        n = config.num_hidden_layers
        if not 0 < fusion_layer < n:
            raise ValueError(f"fusion_layer must be in 1..{n - 1} for a {n}-layer text encoder, "
                             f"got {fusion_layer}")
        self.text_name, self.fusion_layer, self.config = text_encoder, fusion_layer, config
        self.vision_width, self.text_width = embed_dim, config.hidden_size
        self.vision_encoder = VideoEncoder(img_size, patch_size, num_frames, tubelet_size,
                                           embed_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.text_encoder = _Bert(config, fusion_layer, cross_width=embed_dim)
        dec_config = copy.deepcopy(config)
        dec_config.num_hidden_layers = n - fusion_layer
        self.text_decoder = AnswerDecoder(dec_config, cross_width=config.hidden_size)
        # BERT's init for what no checkpoint provides
        self.text_encoder.apply(partial(init_bert_weights, std=config.initializer_range))
        self.text_decoder.apply(partial(init_bert_weights, std=config.initializer_range))
        self.text_decoder.tie_weights()
        self.grad_checkpointing = False
        if load_text_weights:  # no checkpoint: BERT's weights, then the official decoder init
            sd = {f"text_encoder.{k}": v for k, v in read_bert_state_dict(text_encoder).items()}
            sd.update({f"vision_encoder.{k}": v for k, v in self.vision_encoder.state_dict().items()})
            load_qa_state_dict(self, sd, "stage2", f"text encoder {text_encoder}", partial_text=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_encoder.encoder.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return set()

    def frames_of(self, video: torch.Tensor) -> int:
        return max(1, video.shape[2] // self.vision_encoder.encoder.patch_embed.proj.kernel_size[0])

    # ------------------------------------------------------------------ parts
    def encode_question(self, ids: torch.Tensor, att: torch.Tensor,
                        video_tokens: torch.Tensor) -> torch.Tensor:
        """Questions ``ids``/``att [B, Lq]`` with the video tokens ``[B, N, D]`` -> the last
        hidden states ``[B, Lq, W]`` of the whole BERT (fusion layers attend every token)."""
        ckpt = self.grad_checkpointing and self.training
        x = self.text_encoder.embeddings(input_ids=ids)
        layers = self.text_encoder.encoder.layer
        mask = additive_mask(att, x.dtype)
        x = run_layers(layers[:self.fusion_layer], x, mask, checkpointing=ckpt)
        return run_layers(layers[self.fusion_layer:], x, mask, video_tokens, checkpointing=ckpt)

    def answer_nll(self, ids: torch.Tensor, att: torch.Tensor, states: torch.Tensor,
                   states_att: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood ``[A]`` of each answer ``ids [A, La]`` (``[CLS] a [SEP]
        [SEP] [PAD]...``) given its question's ``states [A, Lq, W]``: next-token cross-entropy
        summed over the non-padding target tokens (official ``reduction='none'`` then
        ``.sum(1)``; no label smoothing)."""
        logits = self.text_decoder(ids, att, states, states_att,
                                   checkpointing=self.grad_checkpointing and self.training)
        targets = ids[:, 1:].masked_fill(att[:, 1:] == 0, -100)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
        return nll.sum(1)

    # ------------------------------------------------------------------ training
    def forward(self, video: torch.Tensor, q_ids: torch.Tensor, q_att: torch.Tensor,
                a_ids: torch.Tensor, a_att: torch.Tensor, a_question: torch.Tensor,
                a_weight: torch.Tensor) -> torch.Tensor:
        """The official QA loss of one batch.

        ``video [B,3,T,H,W]``, questions ``q_ids``/``q_att [B, Lq]``, the answers of all
        questions ``a_ids``/``a_att [A, La]``, ``a_question [A]`` (the question of each answer,
        in ``0..B-1``) and ``a_weight [A]`` (its frequency among the question's answers).
        Returns ``sum(weight * NLL) / B``.
        """
        tokens = self.vision_encoder(video)
        states = self.encode_question(q_ids, q_att, tokens)
        nll = self.answer_nll(a_ids, a_att, states[a_question], q_att[a_question])
        return (a_weight.float() * nll).sum() / video.shape[0]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def rank_answers(self, states: torch.Tensor, states_att: torch.Tensor, answer_ids: torch.Tensor,
                     answer_att: torch.Tensor, k: int, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Official ``rank_answer``: ``states [Q, Lq, W]``, ``states_att [Q, Lq]``, the answer
        list tokenised ``answer_ids``/``answer_att [N, La]`` -> ``(ids [Q, k'], probs [Q, k'])``,
        ``k' = min(k, N)`` (the official ``topk(128)`` raises on a shorter list): candidates
        best first and their softmax over the re-scored top k. ``chunk``: (question, candidate)
        pairs per decoder pass (the official code scores all ``Q x k`` at once)."""
        q, n = states.shape[0], answer_ids.shape[0]
        k = max(1, min(int(k), n))
        start = answer_ids[:1, :1].expand(q, 1)  # [CLS]
        logits = self.text_decoder(start, torch.ones_like(start), states, states_att)[:, 0]
        first = F.softmax(logits.float(), dim=-1).index_select(1, answer_ids[:, 1])  # [Q, N]
        top_probs, top_ids = first.topk(k, dim=1)                                   # [Q, k]
        rows = torch.arange(q, device=states.device).repeat_interleave(k)           # [Q*k]
        cands = top_ids.reshape(-1)
        nll = torch.cat([self.answer_nll(answer_ids[cands[s:s + chunk]], answer_att[cands[s:s + chunk]],
                                         states[rows[s:s + chunk]], states_att[rows[s:s + chunk]])
                         for s in range(0, q * k, chunk)])
        # log p(first token) - NLL(every answer token): the first token counts twice (official)
        scores = (top_probs.log() - nll.view(q, k).to(top_probs.dtype))
        probs, order = F.softmax(scores, dim=-1).topk(k, dim=1)
        return torch.gather(top_ids, 1, order), probs


# ---------------------------------------------------------------------- checkpoints
def detect_qa(sd: dict) -> str:
    """``'qa'`` (ours or official QA: ``text_decoder.*``), ``'stage2'`` or ``'other'``."""
    if any(k.startswith("text_decoder.") for k in sd):
        return "qa"
    if any(k.startswith(("vision_encoder.", "text_encoder.")) for k in sd):
        return "stage2"
    return "other"


def _decoder_layer_key(key: str, fusion_layer: int) -> Optional[str]:
    """``bert.encoder.layer.{l}.rest`` -> ``bert.encoder.layer.{l - F}.rest`` for ``l >= F``."""
    parts = key.split(".")
    if parts[:3] != ["bert", "encoder", "layer"] or len(parts) < 5:
        return key  # embeddings
    layer = int(parts[3])
    if layer < fusion_layer:
        return None
    parts[3] = str(layer - fusion_layer)
    return ".".join(parts)


def _from_stage2(sd: dict, model: VideoQAModel, source: str, report: LoadReport) -> dict:
    """Stage-2 keys (ours or official, BERT keys normalised) -> the QA model's (module doc)."""
    own = model.state_dict()
    out = {}
    text = {}
    for k, v in sd.items():
        if k.startswith(_DROPPED) or k == "temp":
            report.dropped.append(k)
        elif k.startswith("text_encoder."):
            text[k[len("text_encoder."):]] = v
        elif k == "vision_encoder.encoder.pos_embed":
            report.dropped.append(k)  # the fixed table is the model's own for its grid
        else:
            out[k] = v
    text = resolve_tied_decoder(text, source)
    for k, v in text.items():
        if k.startswith("bert."):
            out[f"text_encoder.{k[len('bert.'):]}"] = v
            dec = _decoder_layer_key(k, model.fusion_layer)
            target = f"text_decoder.{dec}" if dec is not None else None
        else:  # cls.*: the MLM head becomes the decoder's head
            target = f"text_decoder.{k}"
        if target is None:
            continue
        if target in own and own[target].shape != v.shape:
            # e.g. video cross-attention K/V (vision width) vs the decoder's (text width)
            report.fresh.append(target)
            continue
        out[target] = v
    if not any(k.startswith("cls.") for k in text):  # no MLM head (MiniLM, official fine-tunes)
        report.fresh += [k for k in own if k.startswith("text_decoder.cls.")]
    return out


def _from_qa(sd: dict, source: str, report: LoadReport) -> dict:
    """Our or the official QA layout: BERT key spellings normalised, tied copies resolved."""
    enc, rest = normalise_bert_keys({k: v for k, v in sd.items() if k.startswith("text_encoder.")},
                                    source, prefix="text_encoder.")
    dec, dropped = normalise_bert_keys({k: v for k, v in sd.items() if k.startswith("text_decoder.")},
                                       source, prefix="text_decoder.")
    report.dropped += rest + dropped
    out = {k: v for k, v in sd.items() if not k.startswith(("text_encoder.", "text_decoder."))}
    out.pop("vision_encoder.encoder.pos_embed", None)
    out |= {k.replace("text_encoder.bert.", "text_encoder.", 1): v for k, v in enc.items()}
    dec = resolve_tied_decoder({k[len("text_decoder."):]: v for k, v in dec.items()}, source)
    out |= {f"text_decoder.{k}": v for k, v in dec.items()}
    return out


def load_qa_state_dict(model: VideoQAModel, sd: dict, kind: str, source: str,
                       partial_text: bool = False) -> LoadReport:
    """Load a Stage-2 (``kind='stage2'``) or QA (``'qa'``) state dict into ``model`` strictly:
    any missing, unexpected or mis-shaped key outside the documented mapping raises
    ``CheckpointError``. ``partial_text``: a plain BERT (building without a checkpoint) --
    cross-attention weights and the decoder layers' cross-attention may be missing."""
    report = LoadReport(source, kind)
    if kind == "stage2":
        sd, dropped = normalise_bert_keys(sd, source, prefix="text_encoder.")
        report.dropped += dropped
        sd = _from_stage2(sd, model, source, report)
    elif kind == "qa":
        sd = _from_qa(sd, source, report)
    else:
        raise CheckpointError(f"checkpoint {source} has neither QA keys (text_decoder.*) nor Stage-2 "
                              f"keys (vision_encoder.*, text_encoder.*); first keys: {sorted(sd)[:8]}")
    own = model.state_dict()
    for k in ("text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias"):
        own.pop(k)  # tied: loaded through the word embeddings and cls.predictions.bias
    if partial_text:
        report.fresh += [k for k in own if ".crossattention." in k and k not in sd]
    check_strict(sd, own, set(report.fresh), source, kind, type(model).__name__)
    model.load_state_dict(sd, strict=False)  # strictness enforced above
    model.text_decoder.tie_weights()
    if report.dropped or report.fresh:
        log.info("loaded %s (%s): ignored %s; left at init %s", source, kind, report.dropped,
                 report.fresh)
    return report


def read_qa_state_dict(pretrained: Pretrained) -> tuple[dict, str, str]:
    """``(state dict, kind, source name)`` of a local path or a checkpoint already read."""
    sd, source = state_dict_of(pretrained)
    return sd, detect_qa(sd), source
