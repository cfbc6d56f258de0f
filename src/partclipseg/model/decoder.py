"""The CLIPSeg decoder and the two mask heads of PartCLIPSeg.

Shapes: ``B`` images, ``N`` conditioning classes, ``L = 1 + g*g`` tokens, ``D`` = reduce_dim,
``E`` = projection_dim, ``T`` object-specific classes, ``S`` output side: ``g * (patch/4)**2`` with the
complex head (16 g for 16 px patches), ``g * patch`` with the simple one.
"""
from __future__ import annotations

from typing import Collection

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from .clip import MultiHeadAttention


class DecoderLayer(nn.Module):
    """Post-norm transformer layer with a ReLU MLP (the official code forces ReLU).

    ``x = norm1(x + attn(x))``; ``x = norm2(x + fc2(relu(fc1(x))))``.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    # rows per MLP tile at inference: keeps the [rows, hidden] intermediate in cache-sized blocks
    mlp_tile_rows = 1024

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(x, need_weights=need_weights)
        x = self.norm1(x + attn_out)
        x = self.norm2(x + self.mlp(x))
        return x, weights

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``fc2(relu(fc1(x)))``; without autograd it runs in row tiles with an in-place ReLU, so the
        [rows, hidden] intermediate never exists for all B*N*L rows at once (same numbers per row)."""
        if torch.is_grad_enabled() and x.requires_grad:
            return self.fc2(F.relu(self.fc1(x)))
        flat = x.reshape(-1, x.shape[-1])
        out = torch.empty(flat.shape[0], self.fc2.out_features, dtype=x.dtype, device=x.device)
        for start in range(0, flat.shape[0], self.mlp_tile_rows):
            rows = slice(start, start + self.mlp_tile_rows)
            hidden = F.linear(flat[rows], self.fc1.weight, self.fc1.bias).relu_()
            out[rows] = F.linear(hidden, self.fc2.weight, self.fc2.bias)
        return out.view(*x.shape[:-1], -1)


def patch_transposed_conv(x: torch.Tensor, conv: nn.ConvTranspose2d, weight: torch.Tensor | None = None) -> torch.Tensor:
    """A ``ConvTranspose2d`` whose kernel equals its stride (no padding), as one matrix product.

    Each input pixel writes its own non-overlapping k x k output block, so
    ``y[n, o, i*k + a, j*k + b] = bias[o] + sum_c x[n, c, i, j] * W[c, o, a, b]``: a [pixels, C] x
    [C, O*k*k] product and a pixel shuffle. Much faster than the generic kernel on CPU; same numbers
    up to float summation order. ``weight`` replaces ``conv.weight`` (a sub-kernel: ``MaskHead`` on
    sampled pixels).
    """
    n, c, h, w = x.shape
    weight = conv.weight if weight is None else weight
    _, o, k, _ = weight.shape
    y = x.permute(0, 2, 3, 1).reshape(-1, c) @ weight.reshape(c, o * k * k)
    y = y.view(n, h, w, o, k, k).permute(0, 3, 1, 4, 2, 5).reshape(n, o, h * k, w * k)
    return y if conv.bias is None else y + conv.bias.view(1, o, 1, 1)


def two_patch_transposed_convs(x: torch.Tensor, first: nn.ConvTranspose2d, second: nn.ConvTranspose2d,
                               second_weight: torch.Tensor | None = None) -> torch.Tensor:
    """``second(relu(first(x)))`` for two kernel-equals-stride ``ConvTranspose2d``, as two matrix products.

    The intermediate map stays channels-last in (pixel, sub-pixel) order, [N, h, w, k1, k1, M], which is
    the row order the second product needs, so only the input and the final output are permuted (the
    one-product-per-layer form, ``patch_transposed_conv``, permutes the large intermediate twice).
    Same numbers up to float summation order. x [N, C, h, w] -> [N, O, h k1 k2, w k1 k2].
    ``second_weight`` replaces ``second.weight``: a sub-kernel [M, O, k2', k2'] (``MaskHead`` on sampled
    pixels), and the output is [N, O, h k1 k2', w k1 k2'].
    """
    n, c, h, w = x.shape
    _, m, k1, _ = first.weight.shape
    second_w = second.weight if second_weight is None else second_weight
    _, o, k2, _ = second_w.shape
    # F.linear rather than ``@``: on one CPU thread its kernel runs these tall, 16-column products ~2x faster
    y = F.linear(x.permute(0, 2, 3, 1).reshape(-1, c), first.weight.permute(0, 2, 3, 1).reshape(c, k1 * k1 * m).t(),
                 None if first.bias is None else first.bias.repeat(k1 * k1))
    y = y.view(-1, m)  # rows: (n, i, j, a, b), the intermediate pixel (i k1 + a, j k1 + b)
    z = F.linear(F.relu(y), second_w.reshape(m, o * k2 * k2).t())  # columns: (o, c, d)
    z = z.view(n, h, w, k1, k1, o, k2, k2).permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(n, o, h * k1 * k2, w * k1 * k2)
    return z if second.bias is None else z.add_(second.bias.view(1, o, 1, 1))


class MaskHead(nn.Sequential):
    """Feature map [M, D, g, g] -> mask logits [M, 1, S, S] (S = 16 g for 16 px patches).

    Complex variant (rd64-refined): Conv3x3(D, D) - ReLU - ConvT(D, D/2, k=s=patch/4) - ReLU -
    ConvT(D/2, 1, k=s=patch/4). Simple variant: ConvT(D, 1, k=s=patch). The transposed convolutions
    run as matrix products (``two_patch_transposed_convs``, ``patch_transposed_conv``).
    """

    def forward(self, x: torch.Tensor, pixels: tuple[int, int, int] | None = None) -> torch.Tensor:
        """[M, D, g, g] -> [M, 1, S, S]; with ``pixels = (stride, row offset, column offset)`` only the
        logits at rows ``stride*i + row offset`` and columns ``stride*j + column offset``: [M, 1, S/stride,
        S/stride], equal to ``forward(x)[..., r::stride, c::stride]``. The last transposed convolution's
        kernel equals its stride, so each output pixel reads one pixel of its input through one kernel
        tap: the sampled pixels are a transposed convolution with the taps ``[r::stride, c::stride]``
        (``stride`` must divide that kernel), and the full-size map is never built."""
        last = self[-1]
        sub_weight = None
        if pixels is not None:
            stride, row, col = pixels
            k = last.kernel_size[0]
            if k % stride or not (0 <= row < stride and 0 <= col < stride):
                raise ValueError(f"pixel sample (stride {stride}, offset {row}, {col}) does not fit the mask "
                                 f"head's last {k} x {k} transposed convolution")
            sub_weight = last.weight[:, :, row::stride, col::stride]
        if len(self) == 5:  # complex: conv, relu, then both transposed convolutions in one pass
            x = self[1](self[0](x))
            return two_patch_transposed_convs(x, self[2], last, sub_weight)
        for layer in self:
            if isinstance(layer, nn.ConvTranspose2d):
                x = patch_transposed_conv(x, layer, sub_weight if layer is last else None)
            else:
                x = layer(x)
        return x

    def sampled(self, x: torch.Tensor, sample) -> torch.Tensor:
        """``forward`` on the pixels of a :class:`~partclipseg.losses.PixelSample` (one offset per image):
        ``x`` [B*C, D, g, g] (image-major) -> [B*C, 1, S/stride, S/stride]."""
        b = len(sample.offsets)
        if x.shape[0] % b:
            raise ValueError(f"{x.shape[0]} maps do not split over the {b} images of the pixel sample")
        per_image = x.shape[0] // b
        return torch.cat([self(x[n * per_image:(n + 1) * per_image], (sample.stride, *offset))
                          for n, offset in enumerate(sample.offsets)])

    def output_side(self, grid: int) -> int:
        """The side ``S`` of the mask logits for a ``grid`` x ``grid`` feature map."""
        for layer in self:
            if isinstance(layer, nn.ConvTranspose2d):
                grid *= layer.stride[0]
        return grid

    def __init__(self, dim: int, patch_size: int, complex_head: bool) -> None:
        if complex_head:
            k = patch_size // 4
            super().__init__(
                nn.Conv2d(dim, dim, kernel_size=3, padding=1), nn.ReLU(),
                nn.ConvTranspose2d(dim, dim // 2, kernel_size=k, stride=k), nn.ReLU(),
                nn.ConvTranspose2d(dim // 2, 1, kernel_size=k, stride=k))
        else:
            super().__init__(nn.ConvTranspose2d(dim, 1, kernel_size=patch_size, stride=patch_size))


class CLIPSegDecoder(nn.Module):
    """Class-conditioned shared decoder.

    ``forward(activations, class_embeddings)``: ``activations`` is the list of vision activations
    [B, L, C] in extraction order (shallow to deep); they are consumed deepest first. Each reduced
    activation is computed once per image and broadcast over the ``N`` classes (the official code
    repeats the activations N times first; the numbers are the same). FiLM with the class embedding
    [N, E] is applied before decoder layer ``conditional_layer``.

    Returns ``features`` [B, N, L, D] (CLS included), the per-layer attentions [B, N, H, L, L] when
    ``need_weights`` and the per-layer hidden states [B, N, L, D] when ``need_hidden_states``.
    ``need_weights`` may be a collection of layer indices: only those layers materialise their
    weights (the others run the fused kernel and give ``None`` in the tuple).
    """

    def __init__(self, config: DecoderConfig, vision_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.config = config
        d = config.reduce_dim
        self.film_mul = nn.Linear(projection_dim, d)
        self.film_add = nn.Linear(projection_dim, d)
        self.reduces = nn.ModuleList(nn.Linear(vision_dim, d) for _ in config.extract_layers)
        self.layers = nn.ModuleList(
            DecoderLayer(d, config.num_heads, config.intermediate_size, config.layer_norm_eps)
            for _ in config.extract_layers)

    def forward(self, activations: list[torch.Tensor], class_embeddings: torch.Tensor,
                need_weights: bool | Collection[int] = False, need_hidden_states: bool = False):
        b = activations[0].shape[0]
        n = class_embeddings.shape[0]
        x = None
        attentions: list[torch.Tensor] = []
        hidden_states: list[torch.Tensor] = []
        for i, (activation, reduce, layer) in enumerate(zip(activations[::-1], self.reduces, self.layers)):
            reduced = reduce(activation)  # [B, L, D], once per image
            if x is None:
                x = reduced[:, None].expand(b, n, *reduced.shape[1:])
            else:
                x = reduced[:, None] + x.view(b, n, *x.shape[1:])
            if i == self.config.conditional_layer:
                x = self.film_mul(class_embeddings)[None, :, None] * x + self.film_add(class_embeddings)[None, :, None]
            x = x.reshape(b * n, *x.shape[2:])
            wanted = bool(need_weights) if isinstance(need_weights, bool) else i in need_weights
            x, weights = layer(x, need_weights=wanted)
            if need_weights is not False and (not isinstance(need_weights, bool) or need_weights):
                attentions.append(weights.view(b, n, *weights.shape[1:]) if wanted else None)
            if need_hidden_states:
                hidden_states.append(x.view(b, n, *x.shape[1:]))
        features = x.view(b, n, *x.shape[1:])
        return features, tuple(attentions) or None, tuple(hidden_states) or None


def tokens_to_maps(features: torch.Tensor) -> torch.Tensor:
    """[..., 1 + g*g, D] (CLS first) -> channel-first maps [..., D, g, g]."""
    *lead, tokens, d = features.shape
    g = int(round((tokens - 1) ** 0.5))
    maps = features[..., 1:, :].transpose(-1, -2)
    return maps.reshape(*lead, d, g, g)


class ObjectPartHead(nn.Module):
    """Object-specific part head (SPEC §1.8).

    For each object-specific class t with generalized part ``p(t)`` and object ``o(t)``:

    * visual: ``fuse([F[p(t)], F[P + o(t)]])`` (Linear 2D -> D per pixel), where F are the decoder
      maps of the N = P + O + 1 classes; the extra last row uses ``[F[N-1], F[N-1]]`` (background);
    * text: ``r = text_fuse([E[o'(t)], E[p(t)]])`` (Linear 2E -> E) — object half first, where
      ``o'(t) = o(t)`` when ``object_text_index_offset_bug`` (official) else ``P + o(t)``; last row
      ``[E[N-1], E[N-1]]``;
    * FiLM: ``film_mul(r) * fused + film_add(r)``, then ``mask_head`` -> [B, T+1, S, S].

    The Linear over the concatenated visual pair is split into its two halves, each applied to the N
    shared maps once and gathered per class (identical to concatenating first, up to float rounding).
    """

    def __init__(self, dim: int, projection_dim: int, patch_size: int, complex_head: bool) -> None:
        super().__init__()
        self.visual_fuse = nn.Linear(2 * dim, dim)
        self.text_fuse = nn.Linear(2 * projection_dim, projection_dim)
        self.film_mul = nn.Linear(projection_dim, dim)
        self.film_add = nn.Linear(projection_dim, dim)
        self.mask_head = MaskHead(dim, patch_size, complex_head)

    def class_conditions(self, class_embeddings: torch.Tensor, text_to_part: torch.Tensor,
                         text_to_object: torch.Tensor, num_parts: int,
                         object_index_offset_bug: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """FiLM scale and shift, each [T+1, D], from the class embeddings [N, E] (image independent)."""
        n = class_embeddings.shape[0]
        obj_rows = text_to_object if object_index_offset_bug else text_to_object + num_parts
        bg = torch.tensor([n - 1], device=class_embeddings.device)
        first = torch.cat([obj_rows, bg])
        second = torch.cat([text_to_part, bg])
        r = self.text_fuse(torch.cat([class_embeddings[first], class_embeddings[second]], dim=-1))
        return self.film_mul(r), self.film_add(r)

    def forward(self, maps: torch.Tensor, class_embeddings: torch.Tensor, text_to_part: torch.Tensor,
                text_to_object: torch.Tensor, num_parts: int, object_index_offset_bug: bool = True,
                conditions: tuple[torch.Tensor, torch.Tensor] | None = None,
                chunk_size: int | None = None, pixel_sample=None) -> torch.Tensor:
        """``maps`` [B, N, D, g, g] -> object-specific logits [B, T+1, S, S] (``pixel_sample``, a
        ``losses.PixelSample``: at its pixels only, [B, T+1, S/stride, S/stride]).

        ``chunk_size`` bounds how many classes go through the mask head at once (memory); the result
        does not depend on it.
        """
        if conditions is None:
            conditions = self.class_conditions(class_embeddings, text_to_part, text_to_object, num_parts,
                                               object_index_offset_bug)
        sides = self.visual_sides(maps)
        rows = self.class_rows(text_to_part, text_to_object, num_parts, maps.shape[1])
        t1 = rows[0].shape[0]
        step = chunk_size or t1
        out = None
        for start in range(0, t1, step):
            logits = self.class_logits(sides, rows, conditions, slice(start, start + step), pixel_sample)
            if out is None:
                if step >= t1:
                    return logits
                out = logits.new_empty(logits.shape[0], t1, *logits.shape[2:])  # filled chunk by chunk: no concat copy
            out[:, start:start + logits.shape[1]] = logits
        return out

    def visual_sides(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves of ``visual_fuse`` applied to every class's map: ``maps`` [B, N, D, g, g] ->
        (part side, object side), each [B, N, g, g, D] (bias not added)."""
        d = maps.shape[2]
        pixels = maps.permute(0, 1, 3, 4, 2)  # [B, N, g, g, D]
        w_part, w_obj = self.visual_fuse.weight[:, :d], self.visual_fuse.weight[:, d:]
        return pixels @ w_part.T, pixels @ w_obj.T

    @staticmethod
    def class_rows(text_to_part: torch.Tensor, text_to_object: torch.Tensor, num_parts: int,
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each object-specific class's rows of the N decoder maps, background (row N-1) last: (part rows,
        object rows), each [T+1]."""
        bg = torch.tensor([num_classes - 1], device=text_to_part.device)
        return torch.cat([text_to_part, bg]), torch.cat([text_to_object + num_parts, bg])

    def class_logits(self, sides: tuple[torch.Tensor, torch.Tensor], rows: tuple[torch.Tensor, torch.Tensor],
                     conditions: tuple[torch.Tensor, torch.Tensor], which: slice | torch.Tensor,
                     pixel_sample=None) -> torch.Tensor:
        """Logits [B, t, S, S] of the object-specific classes ``which`` (a slice or long tensor of indices
        into the T+1 classes): fuse the part and object sides (``visual_sides``), FiLM, mask head."""
        part_side, obj_side = sides
        part_rows, obj_rows = rows
        scale, shift = conditions
        b, _, g, _, d = part_side.shape
        fused = part_side[:, part_rows[which]] + obj_side[:, obj_rows[which]] + self.visual_fuse.bias
        fused = scale[which][None, :, None, None] * fused + shift[which][None, :, None, None]  # [B, t, g, g, D]
        t = fused.shape[1]
        flat = fused.permute(0, 1, 4, 2, 3).reshape(b * t, d, g, g)
        logits = self.mask_head(flat) if pixel_sample is None else self.mask_head.sampled(flat, pixel_sample)
        return logits.view(b, t, *logits.shape[-2:])
