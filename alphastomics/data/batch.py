"""A padded batch of slices in model space: the one structure the network, losses and samplers share."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class SliceBatch:
    expression: torch.Tensor  # (B, N, C) expression channels (see alphastomics.data.expression)
    expression_target: torch.Tensor  # (B, N, C) float, 1 where a channel carries a target
    positions: torch.Tensor  # (B, N, 3) model frame (see alphastomics.data.frames)
    node_mask: torch.Tensor  # (B, N) bool, real (unpadded) cells
    gene_mask: torch.Tensor  # (B, G) float, 1 where the slice's platform measured the gene
    dim_mask: torch.Tensor  # (B, 3) float, 1 for the axes the slice uses (z only for 3D slices)
    slice_ids: tuple[str, ...] = field(default=())
    # Imputation: genes whose expression is given while the others are generated (B, G) float.
    given_genes: torch.Tensor | None = None
    # Conditions (alphastomics.data.conditions): per-cell label codes (B, N) and per-slice covariate
    # codes (B, K), long, 0 = none; None when the model is not conditioned.
    cell_labels: torch.Tensor | None = None
    covariates: torch.Tensor | None = None
    # Shared frame with a cutting axis: each section's place as the network sees it (B, 3) float
    # (alphastomics.data.frames.CoordinateFrame.place_features); None otherwise.
    places: torch.Tensor | None = None
    # Shared frame: the training atlas's expression channels near each cell and their closeness
    # (B, N, AtlasReference.width), for cells whose positions are given (alphastomics.data.atlas_prior); None otherwise.
    atlas_prior: torch.Tensor | None = None

    def to(self, device) -> "SliceBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def repeat(self, times: int) -> "SliceBatch":
        """Each example ``times`` times in a row (several draws of one slice in one batch)."""
        tensors = {f.name: getattr(self, f.name).repeat_interleave(times, dim=0)
                   for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **tensors, slice_ids=tuple(s for s in self.slice_ids for _ in range(times)))
