"""Per-cell input embeddings: diffusion time and expression."""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEmbedding(nn.Module):
    """Embeds an integer diffusion step t in [0, T] (0 = clean / given) into ``dim`` features.

    ``sinusoidal``: fixed Fourier features of t/T followed by an MLP (works for any T);
    ``learned``: one learned vector per step.
    """

    def __init__(self, dim: int, diffusion_steps: int, kind: str = "sinusoidal"):
        super().__init__()
        self.kind = kind
        self.diffusion_steps = diffusion_steps
        if kind == "learned":
            self.table = nn.Embedding(diffusion_steps + 1, dim)
        else:
            half = dim // 2
            self.register_buffer(
                "frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1)), persistent=False
            )
        self.mlp = nn.Sequential(nn.Linear(dim if kind == "learned" else 2 * (dim // 2), dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) long -> (B, dim)
        if self.kind == "learned":
            features = self.table(t)
        else:
            # Scale to [0, 1000] so the frequency range matches the usual DDPM setting whatever T is.
            angles = (t.float() * (1000.0 / self.diffusion_steps))[:, None] * self.frequencies[None, :]
            features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.mlp(features)


class ExpressionEmbedding(nn.Module):
    """Embeds a cell's expression channels; unmeasured genes are zeroed and flagged through the
    slice's measured-gene mask, so the model can tell 'absent' from 'zero'."""

    def __init__(self, channel_genes: torch.Tensor, num_genes: int, dim: int):
        super().__init__()
        self.register_buffer("channel_genes", torch.as_tensor(channel_genes, dtype=torch.long).clone(), persistent=False)
        self.values = nn.Sequential(nn.Linear(len(channel_genes), dim), nn.SiLU(), nn.Linear(dim, dim))
        self.measured = nn.Linear(num_genes, dim, bias=False)
        self.given = nn.Linear(num_genes, dim, bias=False)  # imputation: which genes are given clean

    def forward(self, expression: torch.Tensor, gene_mask: torch.Tensor, given_genes: torch.Tensor | None = None) -> torch.Tensor:
        # expression (B, N, C); gene_mask, given_genes (B, G) float
        channel_mask = gene_mask[:, self.channel_genes]
        h = self.values(expression * channel_mask[:, None, :]) + self.measured(gene_mask)[:, None, :]
        if given_genes is not None:
            h = h + self.given(given_genes)[:, None, :]
        return h


class ConditionEmbedding(nn.Module):
    """Learned vectors for per-cell label codes and per-slice covariate codes (alphastomics.data.conditions),
    added to the cell tokens; code 0 ("no condition") has a vector of its own."""

    def __init__(self, cell_type_codes: int, covariate_codes: list[int], dim: int):
        super().__init__()
        self.cell_type = nn.Embedding(cell_type_codes, dim) if cell_type_codes else None
        self.covariates = nn.ModuleList(nn.Embedding(n, dim) for n in covariate_codes)

    def forward(self, cell_labels: torch.Tensor | None, covariates: torch.Tensor | None) -> torch.Tensor | float:
        """(B, N, D) to add to the cell tokens (0 when no code is given)."""
        out: torch.Tensor | float = 0.0
        if self.cell_type is not None and cell_labels is not None:
            out = out + self.cell_type(cell_labels)
        if covariates is not None:
            for k, embedding in enumerate(self.covariates):
                out = out + embedding(covariates[:, k])[:, None, :]
        return out


class FourierPositionEmbedding(nn.Module):
    """Absolute coordinates (model frame, spread ~1) as sines and cosines at octave frequencies,
    from a period of about 25 (whole atlas) down to about 0.1 (neighbouring cells), then a linear map."""

    def __init__(self, dim: int, octaves: int = 8):
        super().__init__()
        self.register_buffer("frequencies", 0.25 * 2.0 ** torch.arange(octaves, dtype=torch.float32), persistent=False)
        self.linear = nn.Linear(3 * 2 * octaves, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, 3) -> (B, N, dim)
        angles = x.float()[..., None] * self.frequencies  # (B, N, 3, octaves)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        return self.linear(features.to(x.dtype))


class PlaceEmbedding(nn.Module):
    """A section's place along the cutting axis (alphastomics.data.frames.CoordinateFrame.place_features:
    centre in model units, scale along the axis, relative thickness) as Fourier features of the
    centre and the three values themselves, then a linear map: one vector per section, added to its
    cells' tokens like a condition."""

    FEATURES = 3

    def __init__(self, dim: int, octaves: int = 6):
        super().__init__()
        self.register_buffer("frequencies", 0.25 * 2.0 ** torch.arange(octaves, dtype=torch.float32), persistent=False)
        self.linear = nn.Linear(2 * octaves + self.FEATURES, dim)

    def forward(self, places: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, dim)
        angles = places[:, :1].float() * self.frequencies
        features = torch.cat([angles.sin(), angles.cos(), places.float()], dim=-1)
        return self.linear(features.to(self.linear.weight.dtype))
