"""The Stage-2 vision-language model (official ``multi_modality/models/umt.py`` ``UMT``).

Layout and parameter names follow the official model, so official Stage-2 checkpoints load with
no renaming (``umt.models.vl_checkpoint``):

- ``vision_encoder``: the Stage-1 student (``PretrainVisionTransformer``: ``encoder.*``,
  ``clip_decoder.*``) with ``pool_norm``; it runs on the visible tokens only;
- ``text_encoder``: ``BertTextEncoder`` (``bert.*`` with ``crossattention`` in the fusion layers,
  ``cls.*``);
- ``vision_proj`` / ``text_proj`` into the shared embedding, ``itm_head``, ``temp``.

The CLIP teacher is not part of this model (the training step owns it, frozen, outside DDP).

One training step is one call of ``forward`` (so DDP sees every parameter used in one
forward): a single masked vision pass gives the fusion tokens, the pooled VTC feature and the
UTA outputs; then the text pass, and, when asked, the VTM pairs and the MLM logits at the masked
positions. The losses themselves are the pure functions of ``umt.losses``::

    out = model(video, ids, att, idx, mask=mask, mlm_input_ids=mlm_ids, mlm_labels=labels)
    vtc = vtc_loss(all_gather_with_grad(out.video_feat), all_gather_with_grad(out.text_feat),
                   all_gather_with_grad(idx), out.temp)
    vtm = vtm_loss(out.vtm_logits); mlm = mlm_loss(out.mlm_logits, out.mlm_targets)
    uta = uta_loss(out.uta, teacher_targets, mask)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from umt.models.pretrain import PretrainVisionTransformer
from umt.models.text import BertTextEncoder

TEMP_MIN, TEMP_MAX = 0.001, 0.5
# The text feature: "cls" (official: the [CLS] output of the text-only layers) or "mean" (the
# masked mean of that output): for sentence encoders trained with mean pooling, such as the
# MiniLM of the tiny preset, whose [CLS] output is the same vector for every sentence (cosine
# 1.0000 between any two captions), so a [CLS] feature cannot be trained to tell texts apart.
TEXT_POOLS = ("cls", "mean")


@dataclass
class VLOutput:
    """What ``VisionLanguageModel.forward`` returns (``M``: VTM rows kept, ``P``: MLM positions)."""

    video_tokens: torch.Tensor            # [B, N_vis, D]  visible tokens after the final norm
    video_feat: torch.Tensor              # [B, E] (or [B, T', E] per frame) L2-normalised pooled video feature
    text_hidden: torch.Tensor             # [B, L, W]      output of the text-only layers
    text_feat: torch.Tensor               # [B, E]         L2-normalised [CLS] feature
    temp: torch.Tensor                    # []             the clamped temperature (fp32)
    uta: Optional[torch.Tensor] = None    # [K, B, N_vis, C_teacher] unit vectors
    vtm_logits: Optional[torch.Tensor] = None  # [3M, 2]: pos | neg video | neg text
    vtm_skipped: int = 0                  # rows without any possible negative (left out)
    mlm_logits: Optional[torch.Tensor] = None  # [P, vocab] at the masked positions
    mlm_targets: Optional[torch.Tensor] = None  # [P] the original token ids there


class VisionLanguageModel(nn.Module):
    """Stage-2 UMT: video ViT + BERT with fusion layers + projections + ITM/MLM heads.

    Vision arguments are the Stage-1 student's (``embed_dim``/``depth``/``num_heads``,
    ``num_frames``, ``img_size``, ``teacher_dim``/``align_layers``, ``drop_path_rate``).
    ``text_encoder``: a BERT directory or hub id (config, weights, tokenizer);
    ``load_text_weights=False`` builds from its config only (a Stage-2 checkpoint follows).
    ``proj_dim``: the shared embedding size (512 for B, 768 for L). ``text_dropout``
    overrides BERT's dropout probabilities (None: the text encoder's config, 0.1 for BERT).
    ``text_pool``: the text feature's pooling, ``"cls"`` (official) or ``"mean"`` (see
    ``TEXT_POOLS``).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 4,
                 tubelet_size: int = 1, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, teacher_dim: int = 512,
                 align_layers: int = 6, text_encoder: str = "bert-base-uncased",
                 fusion_layer: int = 9, proj_dim: int = 512, temp: float = 0.07,
                 load_text_weights: bool = True, text_dropout: Optional[float] = None,
                 text_pool: str = "cls"):
        super().__init__()
        if text_pool not in TEXT_POOLS:
            raise ValueError(f"text_pool={text_pool!r}: choose one of {', '.join(TEXT_POOLS)}")
        self.text_pool = text_pool
        self.vision_encoder = PretrainVisionTransformer(
            img_size=img_size, patch_size=patch_size, num_frames=num_frames,
            tubelet_size=tubelet_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, teacher_dim=teacher_dim,
            align_layers=align_layers, align_norm_eps=1e-5, pool_norm=True)
        self.text_encoder = BertTextEncoder.from_pretrained(
            text_encoder, fusion_layer, cross_width=embed_dim, load_weights=load_text_weights,
            dropout=text_dropout)
        width = self.text_encoder.width
        self.vision_width, self.text_width, self.proj_dim = embed_dim, width, proj_dim
        # torch's default Linear init, as the official model (it applies no init to these).
        self.vision_proj = nn.Linear(embed_dim, proj_dim)
        self.text_proj = nn.Linear(width, proj_dim)
        self.itm_head = nn.Linear(width, 2)
        self.temp = nn.Parameter(torch.tensor(float(temp)))

    # ------------------------------------------------------------------ training hooks
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Non-reentrant activation checkpointing of every ViT block and BERT layer."""
        self.vision_encoder.set_grad_checkpointing(enable)
        self.text_encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"vision_encoder.{k}" for k in self.vision_encoder.no_weight_decay()}

    def weight_decay_anyway(self) -> set[str]:
        """Parameters decayed although 0/1-D: ``temp``. The official optimizer factory exempts
        only 1-D parameters and ``.bias`` names, so the 0-dim ``temp`` gets weight decay there;
        an optimizer grouping that follows the official recipe decays these names too."""
        return {"temp"}

    @torch.no_grad()
    def clamp_temp_(self) -> torch.Tensor:
        """Clamp ``temp`` into [0.001, 0.5] in place (official: at the start of every forward)."""
        self.temp.clamp_(TEMP_MIN, TEMP_MAX)
        return self.temp

    # ------------------------------------------------------------------ encoders
    def _video_feat(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(pooled).float(), dim=-1)

    def frames_of(self, video: torch.Tensor) -> int:
        """Token frames of ``video [B,3,T,H,W]``: T / tubelet (1 for an image)."""
        return max(1, video.shape[2] // self.vision_encoder.encoder.patch_embed.proj.kernel_size[0])

    def forward_vision(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None,
                       visible_idx: Optional[torch.Tensor] = None, align: bool = True,
                       per_frame: bool = False):
        """The training vision pass: one encoder run on the visible tokens.

        ``video [B,3,T,H,W]`` (T=1: images), ``mask`` bool ``[B, N]`` (True = masked) or its
        ``visible_idx [B, N_vis]``. Returns ``(tokens [B, N_vis, D], feat [B, E] L2-normalised,
        uta [K, B, N_vis, C_teacher] unit vectors or None without align)``. The feature is
        ``vision_proj(pool_norm(mean of the visible tokens))``: one vector per clip, as the
        official Stage-2 training (which pools per frame only for tube masks or no mask).
        ``per_frame`` (official ``keep_temporal``, retrieval fine-tuning: no mask): one
        feature per frame, ``feat [B, T', E]``.
        """
        tokens, uta = self.vision_encoder.forward_visible(video, mask, visible_idx, align=align)
        if per_frame and (mask is not None or visible_idx is not None):
            raise ValueError("per_frame features need every token (no mask), as the official "
                             "keep_temporal, which a mask switches off")
        frames = self.frames_of(video) if per_frame else None
        return tokens, self._video_feat(self.vision_encoder.pool(tokens, frames)), uta

    def encode_video(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None,
                     per_frame: bool = False):
        """``video [B,3,T,H,W]`` -> ``(tokens [B, N, D], feat [B, E] or [B, T', E])``.

        ``feat`` is L2-normalised (per frame with ``per_frame``; T' = T / tubelet). Evaluation
        (official ``encode_vision(test=True)``): ``mask=None, per_frame=True``, every token.
        With a mask only the visible tokens run; ``per_frame`` then needs the same number of
        visible tokens in every frame.
        """
        tokens, _ = self.vision_encoder.forward_visible(video, mask, align=False)
        frames = self.frames_of(video) if per_frame else None
        if frames is not None and mask is not None:
            per = (~mask).view(mask.shape[0], frames, -1).sum(-1)
            if not bool((per == per[0, 0]).all()):
                raise ValueError("per_frame pooling of a masked clip needs the same number of "
                                 f"visible tokens in every frame, got {per.tolist()}")
        return tokens, self._video_feat(self.vision_encoder.pool(tokens, frames))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """``input_ids``, ``attention_mask [B, L]`` -> ``(hidden [B, L, W], feat [B, E])``.

        ``hidden``: the text-only layers' output (the fusion layers' input); ``feat``:
        L2-normalised ``text_proj`` of its ``[CLS]`` token (``text_pool="mean"``: of the mean
        over the non-padding tokens).
        """
        hidden = self.text_encoder.encode(input_ids, attention_mask)
        if self.text_pool == "mean":
            m = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        else:
            pooled = hidden[:, 0]
        return hidden, F.normalize(self.text_proj(pooled).float(), dim=-1)

    def itm_logits(self, video_tokens: torch.Tensor, text_hidden: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """Matching logits ``[B, 2]`` (column 1: match) of pairs ``(video_tokens [B, N, D],
        text_hidden [B, L, W] from encode_text)``: ``itm_head`` on the fusion ``[CLS]`` output."""
        fused = self.text_encoder.fuse(text_hidden, attention_mask, video_tokens)
        return self.itm_head(fused[:, 0])

    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   video_tokens: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MLM logits of (already masked) ``input_ids [B, L]`` given ``video_tokens [B, N, D]``.

        Without ``positions``: ``[B, L, vocab]``. With ``positions`` bool ``[B, L]``: only
        there, ``[P, vocab]`` in row-major order (``labels[positions]`` lines up); this is what
        the loss uses, since full-vocabulary logits of every token cost ~0.5 GB per pass at
        batch 128. As officially, the masked ids go through the text layers again, then fusion.
        """
        hidden = self.text_encoder.encode(input_ids, attention_mask)
        fused = self.text_encoder.fuse(hidden, attention_mask, video_tokens)
        if positions is not None:
            fused = fused[positions]
        return self.text_encoder.mlm_head(fused)

    def vtm_logits(self, video_tokens: torch.Tensor, text_hidden: torch.Tensor,
                   attention_mask: torch.Tensor, negatives) -> torch.Tensor:
        """ITM logits ``[3M, 2]`` of ``[(v_i, t_i) | (v_neg(i), t_i) | (v_i, t_neg(i))]`` over the
        ``M`` rows ``i`` with ``negatives.valid`` (``umt.losses.HardNegatives``), one fusion pass.

        With no valid row the positive pairs still run and an empty ``[0, 2]`` slice comes back,
        so every fusion parameter stays in the graph (DDP) while the loss is 0.
        """
        rows = negatives.valid.nonzero().squeeze(1)
        if rows.numel() == 0:
            return self.itm_logits(video_tokens, text_hidden, attention_mask)[:0]
        nv, nt = negatives.video_for_text[rows], negatives.text_for_video[rows]
        v = torch.cat([video_tokens[rows], video_tokens[nv], video_tokens[rows]])
        t = torch.cat([text_hidden[rows], text_hidden[rows], text_hidden[nt]])
        a = torch.cat([attention_mask[rows], attention_mask[rows], attention_mask[nt]])
        return self.itm_logits(v, t, a)

    # ------------------------------------------------------------------ one training step
    def forward(self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                idx: torch.Tensor, mask: Optional[torch.Tensor] = None,
                visible_idx: Optional[torch.Tensor] = None, *, uta: bool = True, vtm: bool = True,
                mlm_input_ids: Optional[torch.Tensor] = None,
                mlm_labels: Optional[torch.Tensor] = None, negatives=None,
                generator: Optional[torch.Generator] = None, per_frame: bool = False,
                media: Optional[torch.Tensor] = None) -> VLOutput:
        """Everything the four Stage-2 losses need, from one masked vision pass.

        ``video [B,3,T,H,W]``, ``input_ids``/``attention_mask [B, L]``, ``idx [B]`` (sample ids:
        equal ids are positives), ``mask`` bool ``[B, N]`` or ``visible_idx``. ``uta=False``
        skips the alignment heads; ``vtm=False`` the VTM pairs; MLM runs when
        ``mlm_input_ids``/``mlm_labels`` (``umt.losses.mlm_mask``) are given. VTM negatives are
        drawn from the local batch by ``umt.losses.sample_hard_negatives`` (``generator``), or
        given as ``negatives`` (``HardNegatives``); ``media [B]`` (media ids) keeps rows of one
        media from being each other's negatives. ``temp`` is clamped first, as officially.
        ``per_frame`` (retrieval fine-tuning, no mask): ``video_feat`` is ``[B, T', E]`` and the
        VTC similarity / hard-negative weights are means of per-frame cosines (official
        ``keep_temporal``).
        """
        from umt import losses  # here, not at import: umt.losses imports umt.models

        temp = self.clamp_temp_()
        tokens, video_feat, uta_out = self.forward_vision(video, mask, visible_idx, align=uta,
                                                          per_frame=per_frame)
        text_hidden, text_feat = self.encode_text(input_ids, attention_mask)
        out = VLOutput(tokens, video_feat, text_hidden, text_feat, temp, uta=uta_out)
        if vtm:
            if negatives is None:
                with torch.no_grad():
                    sim = losses.similarity(video_feat, text_feat, temp)
                    negatives = losses.sample_hard_negatives(sim, idx, generator=generator,
                                                             media=media)
            out.vtm_logits = self.vtm_logits(tokens, text_hidden, attention_mask, negatives)
            out.vtm_skipped = negatives.skipped
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("MLM needs both mlm_input_ids and mlm_labels (umt.losses.mlm_mask)")
        if mlm_input_ids is not None:
            positions = mlm_labels != -100
            out.mlm_logits = self.mlm_logits(mlm_input_ids, attention_mask, tokens, positions)
            out.mlm_targets = mlm_labels[positions]
        return out
