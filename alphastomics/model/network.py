"""The AlphaSTomics denoiser: a transformer over the cells of a slice.

Input: noised (or given) expression channels (B, N, C), noised (or given) coordinates (B, N, 3) in
the model frame, the diffusion step of each modality (0 = given) and the position noise level,
node, gene and axis masks. Output: predictions of the clean expression channels and coordinates
(x0). Each block has global linear attention over all cells (O(N)), optional message passing over
each cell's k nearest neighbours (O(N k)) and a dense or mixture-of-experts feed-forward layer.

Coordinates are preconditioned (Karras et al. 2022, for a VP process with data spread 1):
x0 = c_skip x_t + c_out F, where c_skip x_t is the best linear guess of x0 from x_t and F the
blocks' accumulated equivariant move of each cell, at unit scale whatever the noise level; without
it the network had to grow a tissue of unit size out of noise by bounded contractions toward
attention centroids. Expression is predicted directly (see ``forward``). Given modalities (noise
level 1) pass through unchanged.

In a ``per_slice`` frame the network is E(n)-equivariant (rotations, reflections, translations):
coordinates enter the features only through distances. In a ``shared`` frame
(``absolute_positions``) the features also see Fourier features of the absolute coordinates, so the
model can learn what is expressed where.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alphastomics.config import ModelConfig
from alphastomics.data.batch import SliceBatch
from alphastomics.model.attention import EquivariantLinearAttention, SoftmaxAttention
from alphastomics.data.atlas_prior import CLOSENESS_SCALES
from alphastomics.model.embedding import (ConditionEmbedding, ExpressionEmbedding, FourierPositionEmbedding, PlaceEmbedding,
                                          TimeEmbedding)
from alphastomics.model.local import LocalMessagePassing, knn_graph
from alphastomics.model.moe import FeedForward, MixtureOfExperts


@dataclass
class Prediction:
    expression: torch.Tensor  # (B, N, C) predicted clean expression channels
    positions: torch.Tensor  # (B, N, 3) predicted clean coordinates (model frame)
    aux_loss: torch.Tensor  # scalar: MoE load-balancing loss summed over layers
    embedding: torch.Tensor | None = None  # (B, N, D) final per-cell features (after layer norm)


@dataclass
class DenoiserInput:
    """What the network is shown of each modality at one step: its noised (or given) values, and per
    example (B,) its diffusion step (0: given) and noise level alpha_bar (1: given)."""

    expression: torch.Tensor  # (B, N, C) expression channels
    positions: torch.Tensor  # (B, N, 3) coordinates (model frame)
    t_expression: torch.Tensor
    t_position: torch.Tensor
    expression_alpha_bar: torch.Tensor
    position_alpha_bar: torch.Tensor


def denoise(network, state: DenoiserInput, batch: SliceBatch) -> Prediction:
    """The network's x0 prediction for ``state``: the one call that training and sampling share.
    The cell, gene and axis masks, the given genes (imputation) and the condition codes are the batch's."""
    return network(state.expression, state.positions, state.t_expression, state.t_position, state.expression_alpha_bar,
                   state.position_alpha_bar, batch.node_mask, batch.gene_mask, batch.dim_mask,
                   given_genes=batch.given_genes, cell_labels=batch.cell_labels, covariates=batch.covariates,
                   places=batch.places, atlas_prior=batch.atlas_prior)


def masked_centre(x: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
    """Subtract the centroid of the real (unpadded) cells; padded rows become 0."""
    m = node_mask[..., None].to(x.dtype)
    centroid = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    return (x - centroid) * m


def precondition(alpha_bar: torch.Tensor, data_std: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out), each (B,), for x_t = sqrt(ab) x0 + sqrt(1 - ab) eps and data of spread ``data_std``."""
    a = alpha_bar.clamp(0.0, 1.0).sqrt()
    s = (1.0 - alpha_bar).clamp(min=0.0).sqrt()
    total = a**2 * data_std**2 + s**2
    return a * data_std**2 / total, data_std * s / total.sqrt()


class Block(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "linear"):
        super().__init__()
        dim = config.hidden_dim
        self.norm_attention = nn.LayerNorm(dim)
        attention_cls = EquivariantLinearAttention if attention == "linear" else SoftmaxAttention
        self.attention = attention_cls(
            dim, config.num_heads, gated=config.use_gated_attention, gate_type=config.gate_type, dropout=config.dropout
        )
        self.local = None
        if config.local_neighbours > 0:
            self.norm_local = nn.LayerNorm(dim)
            self.local = LocalMessagePassing(dim, config.dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = config.ffn_multiplier * dim
        if config.use_moe:
            self.ffn = MixtureOfExperts(dim, hidden, config.num_experts, config.moe_top_k, config.dropout)
        else:
            self.ffn = FeedForward(dim, hidden, config.dropout)

    def forward(self, h, x, node_mask, graph):
        dh, dx = self.attention(self.norm_attention(h), x, node_mask)
        h = h + dh
        x = x + dx
        if self.local is not None:
            dh, dx = self.local(self.norm_local(h), x, *graph)
            h = h + dh
            x = x + dx * node_mask[..., None]
        if isinstance(self.ffn, MixtureOfExperts):
            f, aux = self.ffn(self.norm_ffn(h), node_mask)
        else:
            f, aux = self.ffn(self.norm_ffn(h))
        h = (h + f) * node_mask[..., None]
        return h, x, aux


class AlphaSTomicsNet(nn.Module):
    def __init__(self, config: ModelConfig, channel_genes, num_genes: int, diffusion_steps: int,
                 absolute_positions: bool = False, attention: str = "linear", condition_sizes: tuple[int, list[int]] = (0, []),
                 place_axis: int | None = None, atlas_prior: bool = False):
        """``channel_genes`` (C,): the gene of each expression channel (alphastomics.data.expression);
        ``condition_sizes``: codes of the cell-type condition and of each slice covariate (0, []: none);
        ``place_axis``: sections carry their place along this cutting axis (alphastomics.data.places);
        ``atlas_prior``: cells whose positions are given are shown the training atlas's expression
        near them (alphastomics.data.atlas_prior)."""
        super().__init__()
        self.config = config
        num_channels = len(channel_genes)
        self.num_channels = num_channels
        self.num_genes = num_genes
        self.absolute_positions = absolute_positions
        dim = config.hidden_dim
        self.expression_in = ExpressionEmbedding(torch.as_tensor(channel_genes), num_genes, dim)
        # Channels past the first num_genes are presence bits of zero-inflated genes (see
        # alphastomics.data.expression): they keep a skip connection from their noisy input.
        self.register_buffer("presence_channels", torch.arange(num_channels) >= num_genes, persistent=False)
        self.time_expression = TimeEmbedding(dim, diffusion_steps, config.time_embedding)
        self.time_position = TimeEmbedding(dim, diffusion_steps, config.time_embedding)
        # Invariant geometry at the input: each cell's squared distance to the slice centroid.
        self.radius_in = nn.Linear(1, dim)
        self.position_in = FourierPositionEmbedding(dim) if absolute_positions else None
        self.conditions_in = ConditionEmbedding(condition_sizes[0], list(condition_sizes[1]), dim) \
            if condition_sizes[0] or condition_sizes[1] else None
        self.blocks = nn.ModuleList(Block(config, attention) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim)
        self.expression_out = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, num_channels))
        # Shared frame: the equivariant moves are combinations of offsets between cells and cannot
        # say "this cell belongs at x = 50"; an absolute head can (what is expressed where).
        self.position_out = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 3)) if absolute_positions else None
        # One projection per block, zero at start: the network begins as the input-only one
        # (made last, so the other weights draw the same random numbers as without them).
        self.conditions_per_block = nn.ModuleList(nn.Linear(dim, dim) for _ in range(config.num_layers)) \
            if (self.conditions_in is not None or place_axis is not None) and config.condition_every_block else None
        if self.conditions_per_block is not None:
            for projection in self.conditions_per_block:
                nn.init.zeros_(projection.weight)
                nn.init.zeros_(projection.bias)
        self.place_axis = place_axis
        self.place_in = PlaceEmbedding(dim) if place_axis is not None else None
        # No bias: a cell without a prior (zeros) gets nothing added, as a network without one.
        self.prior_in = nn.Linear(num_channels + len(CLOSENESS_SCALES), dim, bias=False) if atlas_prior else None
        # Per cell and channel, how much of the prior passes straight to the estimate: the atlas's
        # average near a cell is already an estimate, so the network starts from it (gate 1) and
        # learns where to trust it less (far neighbours) and what to correct.
        self.prior_gate = nn.Linear(dim, num_channels) if atlas_prior else None
        if self.prior_gate is not None:
            nn.init.zeros_(self.prior_gate.weight)
            nn.init.ones_(self.prior_gate.bias)

    def _absolute(self, x: torch.Tensor, places: torch.Tensor | None) -> torch.Tensor:
        """Coordinates in the frame's absolute units: with sections' places, the coordinate along the
        cutting axis is measured from the section's place; what is expressed where is learnt on the
        absolute one, over the whole range the training sections cover, not per place."""
        if self.place_axis is None or places is None:
            return x
        along = x[..., self.place_axis] * places[:, None, 1].to(x.dtype) + places[:, None, 0].to(x.dtype)
        return torch.cat([x[..., : self.place_axis], along[..., None], x[..., self.place_axis + 1:]], dim=-1)

    def forward(
        self,
        expression: torch.Tensor,
        positions: torch.Tensor,
        t_expression: torch.Tensor,
        t_position: torch.Tensor,
        expression_alpha_bar: torch.Tensor,
        position_alpha_bar: torch.Tensor,
        node_mask: torch.Tensor,
        gene_mask: torch.Tensor,
        dim_mask: torch.Tensor,
        given_genes: torch.Tensor | None = None,
        cell_labels: torch.Tensor | None = None,
        covariates: torch.Tensor | None = None,
        places: torch.Tensor | None = None,
        atlas_prior: torch.Tensor | None = None,
    ) -> Prediction:
        """``given_genes`` (B, G): imputation, genes given clean while the others are generated;
        ``cell_labels`` (B, N), ``covariates`` (B, K): condition codes (0 = none); ``places`` (B, 3):
        the sections' places along the cutting axis (CoordinateFrame.place_features); ``atlas_prior``
        (B, N, C): the training atlas's expression channels near each cell, used where positions are given."""
        if (self.place_in is not None) != (places is not None):
            raise ValueError("this network takes the sections' places" if self.place_in is not None
                             else "this network was trained without sections' places")
        inputs = (expression, positions, t_expression, t_position, expression_alpha_bar, position_alpha_bar, node_mask,
                  gene_mask, dim_mask, given_genes, cell_labels, covariates, places, atlas_prior)
        weights = self.radius_in.weight.dtype
        if weights in (torch.bfloat16, torch.float16) and not torch.is_autocast_enabled(expression.device.type):
            # DeepSpeed's bf16 (or fp16) casts every weight but neither the inputs nor the noise the
            # training step draws in fp32: the matrix products run in the weights' precision, the
            # coordinates' arithmetic stays in fp32.
            with torch.autocast(expression.device.type, dtype=weights):
                return self._forward(*inputs)
        return self._forward(*inputs)

    def _forward(self, expression, positions, t_expression, t_position, expression_alpha_bar, position_alpha_bar,
                 node_mask, gene_mask, dim_mask, given_genes, cell_labels, covariates, places, atlas_prior) -> Prediction:
        mask = node_mask[..., None].to(positions.dtype)
        x_t = positions * mask if self.absolute_positions else masked_centre(positions, node_mask)
        centred = masked_centre(x_t, node_mask)
        h = (
            self.expression_in(expression, gene_mask, given_genes)
            + self.radius_in(torch.log1p(centred.pow(2).sum(-1, keepdim=True)))
            + (self.time_expression(t_expression) + self.time_position(t_position))[:, None, :]
        )
        prior, located = None, None
        if self.prior_in is not None and atlas_prior is not None:
            # only where positions are given: a generated position has no place to look the atlas up at
            prior = atlas_prior.to(h.dtype) * (position_alpha_bar >= 1.0).to(h.dtype)[:, None, None]
            h = h + self.prior_in(prior)
            # An example shown the atlas around its cells is told where they are by it, and not also by
            # absolute coordinates or its place: at a held-out section's coordinates those take values
            # training never saw, and what the network learnt from them there was worse than the atlas.
            located = (prior != 0).flatten(1).any(1)
        absent = 1.0 if located is None else (~located).to(h.dtype)[:, None, None]
        if self.position_in is not None:
            # Fourier features of a noisy coordinate carry signal in proportion to sqrt(alpha_bar):
            # at high noise they would only feed the features noise.
            signal = position_alpha_bar.clamp(0.0, 1.0).sqrt().to(h.dtype)[:, None, None]
            h = h + absent * signal * self.position_in(self._absolute(x_t, places))
        conditions = self.conditions_in(cell_labels, covariates) if self.conditions_in is not None else 0.0
        if self.place_in is not None:
            conditions = conditions + absent * self.place_in(places).to(h.dtype)[:, None, :]
        h = h + conditions
        h = h * node_mask[..., None]
        graph = knn_graph(x_t, node_mask, self.config.local_neighbours) if self.config.local_neighbours > 0 else None
        x = x_t
        aux = h.new_zeros(())
        for index, block in enumerate(self.blocks):
            if self.conditions_per_block is not None and torch.is_tensor(conditions):
                h = h + self.conditions_per_block[index](conditions) * node_mask[..., None]
            h, x, block_aux = block(h, x, node_mask, graph)
            aux = aux + block_aux
        features = self.norm_out(h)
        c_skip, c_out = precondition(position_alpha_bar.to(x.dtype))
        move = x - x_t
        if self.position_out is not None:
            move = move + self.position_out(features).to(move.dtype)
        move = move * dim_mask[:, None, :]
        positions_x0 = c_skip[:, None, None] * x_t + c_out[:, None, None] * move
        # Axes the slice does not generate (z of a 2D slice) keep their given values.
        positions_x0 = torch.where(dim_mask[:, None, :].bool(), positions_x0, x_t)
        if not self.absolute_positions:
            positions_x0 = masked_centre(positions_x0, node_mask)
        # Magnitudes are predicted directly (x0): preconditioned with a skip connection, the per-cell
        # noise of the sampler's own trajectory is carried into the estimate and never removed, so
        # generated expression comes out too spread and less correlated with the truth. Presence bits
        # are preconditioned: predicted directly, the last steps' x0 is the blurred probability, and
        # thresholding it drops the rarer genes of each cell (docs/findings/model.md).
        output = self.expression_out(features)
        if prior is not None:
            output = output + self.prior_gate(features).to(output.dtype) * prior[..., : self.num_channels].to(output.dtype)
        e_skip, e_out = precondition(expression_alpha_bar.to(expression.dtype))
        preconditioned = e_skip[:, None, None] * expression + e_out[:, None, None] * output
        expression_x0 = torch.where(self.presence_channels, preconditioned, output)
        given = (expression_alpha_bar >= 1.0)[:, None, None]
        if given_genes is not None:
            given = given | (given_genes[:, self.expression_in.channel_genes] > 0)[:, None, :]
        expression_x0 = torch.where(given, expression, expression_x0)
        return Prediction(expression=expression_x0, positions=positions_x0 * mask, aux_loss=aux, embedding=features)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, active per cell). For a mixture of experts only ``moe_top_k`` of the experts of a
    layer run for each cell, so the other experts' parameters are not active."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for module in model.modules():
        if isinstance(module, MixtureOfExperts):
            per_expert = sum(p.numel() for p in module.experts[0].parameters())
            inactive += per_expert * (module.num_experts - module.top_k)
    return total, total - inactive
