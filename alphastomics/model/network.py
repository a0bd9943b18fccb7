"""The AlphaSTomics denoiser: a transformer over the cells of a slice.

Input: noised (or given) standardised expression (B, N, G), noised (or given) coordinates (B, N, 3)
in the slice's normalised frame, the diffusion step of each modality (0 = given), the node mask and
the measured-gene mask. Output: predictions of the clean expression and clean coordinates (x0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alphastomics.config import ModelConfig
from alphastomics.model.attention import EquivariantLinearAttention, SoftmaxAttention
from alphastomics.model.embedding import ExpressionEmbedding, TimeEmbedding
from alphastomics.model.moe import FeedForward, MixtureOfExperts


@dataclass
class Prediction:
    expression: torch.Tensor  # (B, N, G) predicted clean expression (standardised)
    positions: torch.Tensor  # (B, N, 3) predicted clean coordinates (normalised frame, centred)
    aux_loss: torch.Tensor  # scalar: MoE load-balancing loss summed over layers
    embedding: torch.Tensor | None = None  # (B, N, D) final per-cell features (after layer norm)


def masked_centre(x: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
    """Subtract the centroid of the real (unpadded) cells; padded rows become 0."""
    m = node_mask[..., None].to(x.dtype)
    centroid = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
    return (x - centroid) * m


class Block(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "linear"):
        super().__init__()
        dim = config.hidden_dim
        self.norm_attention = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        attention_cls = EquivariantLinearAttention if attention == "linear" else SoftmaxAttention
        self.attention = attention_cls(
            dim, config.num_heads, gated=config.use_gated_attention, gate_type=config.gate_type, dropout=config.dropout
        )
        hidden = config.ffn_multiplier * dim
        if config.use_moe:
            self.ffn = MixtureOfExperts(dim, hidden, config.num_experts, config.moe_top_k, config.dropout)
        else:
            self.ffn = FeedForward(dim, hidden, config.dropout)

    def forward(self, h, x, node_mask):
        dh, dx = self.attention(self.norm_attention(h), x, node_mask)
        h = h + dh
        if isinstance(self.ffn, MixtureOfExperts):
            f, aux = self.ffn(self.norm_ffn(h), node_mask)
        else:
            f, aux = self.ffn(self.norm_ffn(h))
        h = (h + f) * node_mask[..., None]
        return h, x + dx, aux


class AlphaSTomicsNet(nn.Module):
    def __init__(self, config: ModelConfig, num_genes: int, diffusion_steps: int, attention: str = "linear"):
        super().__init__()
        self.config = config
        self.num_genes = num_genes
        dim = config.hidden_dim
        self.expression_in = ExpressionEmbedding(num_genes, dim)
        self.time_expression = TimeEmbedding(dim, diffusion_steps, config.time_embedding)
        self.time_position = TimeEmbedding(dim, diffusion_steps, config.time_embedding)
        # Invariant geometry at the input: each cell's squared distance to the slice centroid.
        self.radius_in = nn.Linear(1, dim)
        self.blocks = nn.ModuleList(Block(config, attention) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim)
        self.expression_out = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, num_genes))

    def forward(
        self,
        expression: torch.Tensor,
        positions: torch.Tensor,
        t_expression: torch.Tensor,
        t_position: torch.Tensor,
        node_mask: torch.Tensor,
        gene_mask: torch.Tensor,
    ) -> Prediction:
        x = masked_centre(positions, node_mask)
        radius = x.pow(2).sum(-1, keepdim=True)
        h = (
            self.expression_in(expression, gene_mask)
            + self.radius_in(torch.log1p(radius))
            + (self.time_expression(t_expression) + self.time_position(t_position))[:, None, :]
        )
        h = h * node_mask[..., None]
        aux = h.new_zeros(())
        for block in self.blocks:
            h, x, block_aux = block(h, x, node_mask)
            aux = aux + block_aux
        features = self.norm_out(h)
        expression_x0 = self.expression_out(features)
        return Prediction(expression=expression_x0, positions=masked_centre(x, node_mask), aux_loss=aux, embedding=features)


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
