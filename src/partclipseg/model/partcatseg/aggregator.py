"""PartCATSeg's disentangled cost aggregation (``part_cat_seg_model.Aggregator``).

Class axes: part-object = [P generalized parts, O objects with parts, background] (N+1 = P+O+1 rows);
specific = [T object-specific parts, background] (T+1 rows). ``Tpl`` = prompt templates (80),
E = CLIP embed, C = hidden, g = cost grid (24).

1. Object / generalized-part costs: cosine of each CLIP token with each template's text
   -> [B, Tpl, N+1, g, g]; templates are the channels of a 7x7 conv -> [B, C, N+1, g, g]; all rows
   through the same aggregation layers (one pass); decoded to part-object logits [B, N+1, 4g, 4g].
2. Compositional parts: for class t, channels ``[emb[part(t)], emb[P + object(t)]]`` (background:
   ``[emb[-1], emb[-1]]``) -> 1x1 conv to E -> cosine with each template of the specific text
   -> [B, Tpl, T+1, g, g] -> another 7x7 conv, its own aggregation layers, the SAME decoder ->
   specific logits [B, T+1, 4g, 4g].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aggregation import AggregationLayer
from .config import PartCATSegConfig
from .decoder import CostDecoder


class PartCATSegAggregator(nn.Module):
    def __init__(self, config: PartCATSegConfig) -> None:
        super().__init__()
        a = config.aggregator
        e, dino = config.clip.embed_dim, config.dino.embed_dim
        c = a.hidden_dim

        def layers() -> nn.ModuleList:
            return nn.ModuleList(
                AggregationLayer(c, a.text_guidance_proj_dim, a.appearance_guidance_proj_dim, a.num_heads,
                                 a.feature_resolution, a.pooling_size, a.window_size, a.class_attention)
                for _ in range(a.num_layers))

        self.part_object_cost_embed = nn.Conv2d(a.num_templates, c, kernel_size=7, padding=3)
        self.part_object_layers = layers()
        self.compose_projection = nn.Conv2d(2 * c, e, kernel_size=1)
        self.specific_cost_embed = nn.Conv2d(a.num_templates, c, kernel_size=7, padding=3)
        self.specific_layers = layers()
        self.appearance_projection = nn.Sequential(nn.Conv2d(dino, a.appearance_guidance_proj_dim, 3, padding=1),
                                                   nn.ReLU())
        self.text_projection = nn.Sequential(nn.Linear(e, a.text_guidance_proj_dim), nn.ReLU())
        self.decoder_guidance_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dino, p, 3, padding=1), nn.ReLU()) for p in a.decoder_guidance_proj_dims)
        self.decoder = CostDecoder(c, a.decoder_dims, a.decoder_guidance_proj_dims)

    @staticmethod
    def correlation(img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """img [B, E, g, g], text [B, K, Tpl, E] -> cosine [B, Tpl, K, g, g]."""
        return torch.einsum("bchw,btpc->bpthw", F.normalize(img, dim=1), F.normalize(text, dim=-1))

    @staticmethod
    def ensembled(text: torch.Tensor) -> torch.Tensor:
        """[B, K, Tpl, E] -> template mean, renormalised: [B, K, E]."""
        mean = text.mean(dim=-2)
        return mean / mean.norm(dim=-1, keepdim=True)

    @staticmethod
    def embed_cost(conv: nn.Conv2d, cost: torch.Tensor, trace: dict | None, name: str) -> torch.Tensor:
        """cost [B, Tpl, K, g, g] -> conv over templates -> [B, C, K, g, g]."""
        b, tpl, k, h, w = cost.shape
        out = conv(cost.transpose(1, 2).reshape(b * k, tpl, h, w))
        if trace is not None:
            trace[name] = out
        return out.reshape(b, k, -1, h, w).transpose(1, 2)

    def forward(self, img: torch.Tensor, text_part_object: torch.Tensor, text_specific: torch.Tensor,
                guidance: tuple[torch.Tensor, torch.Tensor, torch.Tensor], part_index: torch.Tensor,
                object_index: torch.Tensor, num_parts: int, trace: dict | None = None):
        """Aggregate and decode.

        img [B, E, g, g]; text_part_object [B, N+1, Tpl, E]; text_specific [B, T+1, Tpl, E];
        guidance = (res4 [B, D, g, g], res3 [B, D, 2g, 2g], res2 [B, D, 4g, 4g]) DINOv2 maps;
        part_index / object_index [T] (generalized-part id / object-with-parts id of each class);
        num_parts = P. Returns ``(part_object_logits [B, N+1, 4g, 4g], specific_logits [B, T+1, 4g, 4g],
        costs)``, costs = {part_obj_cost [B, Tpl, N+1, g, g], part_obj_cost_emb [B, C, N+1, g, g],
        specific_part_cost [B, Tpl, T+1, g, g], specific_part_cost_emb [B, C, T+1, g, g]}.
        ``trace`` (optional dict) receives the intermediates under the fixture's ``agg.*`` names.
        """
        t = part_index.numel()
        if text_specific.shape[1] != t + 1:
            raise ValueError(f"{text_specific.shape[1]} specific text rows for {t} classes (+ background expected)")
        if trace is not None:
            trace["img_feats"] = img
        corr = self.correlation(img, text_part_object)
        emb = self.embed_cost(self.part_object_cost_embed, corr, trace, "conv1.out")
        appearance = self.appearance_projection(guidance[0])
        decoder_guidance = tuple(proj(g) for proj, g in zip(self.decoder_guidance_projections, guidance[1:]))
        ensembled = self.ensembled(text_part_object)
        text_guidance = self.text_projection(ensembled)
        if trace is not None:
            trace["guidance_projection.out"] = appearance
            for i, g in enumerate(decoder_guidance):
                trace[f"decoder_guidance_projection.{i}.out"] = g
            trace["text_ensembled.part_obj"] = ensembled
            trace["text_guidance_projection.part_obj.out"] = text_guidance
        for i, layer in enumerate(self.part_object_layers):
            sub = {} if trace is not None else None
            emb = layer(emb, appearance, text_guidance, sub)
            if trace is not None:
                trace[f"layers.{i}.swin_block.out"] = sub["spatial.out"]
                trace[f"layers.{i}.out"] = emb
        part_object_logits = self.decoder(emb, decoder_guidance)

        # compositional parts: [generalized-part embedding, object embedding] per class
        b, c, _, h, w = emb.shape
        parts = emb[:, :, part_index]                      # [B, C, T, g, g]
        objects = emb[:, :, num_parts + object_index]      # [B, C, T, g, g]
        composed = torch.cat([parts, objects], dim=1)      # [B, 2C, T, g, g]
        background = emb[:, :, -1:].repeat(1, 2, 1, 1, 1)  # [B, 2C, 1, g, g]
        composed = torch.cat([composed, background], dim=2).transpose(1, 2).reshape(b * (t + 1), 2 * c, h, w)
        cost_feats = self.compose_projection(composed)
        if trace is not None:
            trace["conv_proj_feat.out"] = cost_feats
        cost_feats = cost_feats.reshape(b, t + 1, -1, h, w)
        cost = torch.einsum("btchw,btpc->bpthw", F.normalize(cost_feats, dim=2), F.normalize(text_specific, dim=-1))
        specific = self.embed_cost(self.specific_cost_embed, cost, trace, "conv2.out")
        ensembled = self.ensembled(text_specific)
        text_guidance = self.text_projection(ensembled)
        if trace is not None:
            trace["text_ensembled.specific"] = ensembled
            trace["text_guidance_projection.specific.out"] = text_guidance
        for i, layer in enumerate(self.specific_layers):
            sub = {} if trace is not None else None
            specific = layer(specific, appearance, text_guidance, sub)
            if trace is not None:
                trace[f"layers_specific_part.{i}.swin_block.out"] = sub["spatial.out"]
                trace[f"layers_specific_part.{i}.out"] = specific
        specific_logits = self.decoder(specific, decoder_guidance)
        costs = {"part_obj_cost": corr, "specific_part_cost": cost,
                 "part_obj_cost_emb": emb, "specific_part_cost_emb": specific}
        return part_object_logits, specific_logits, costs
