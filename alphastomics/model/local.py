"""Message passing over each cell's k nearest neighbours (EGNN, Satorras et al. 2021, on a kNN graph).

Global linear attention sees every cell but blurs local detail; this layer sees the k nearest cells
of each cell in the current coordinates, which is where neighbourhood structure (layers, niches,
the next cell over) lives. Messages use invariant inputs only (both cells' features and their
distance), and the coordinate update moves a cell along its offsets to its neighbours, so the layer
is E(n)-equivariant. Cost O(N k) per layer; the graph is found once per forward pass with a k-d tree
(O(N log N), on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn



@torch.no_grad()
def knn_graph(positions: torch.Tensor, node_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, k) neighbour indices (self excluded) and (B, N, k) validity of each edge.

    Cells of a slice with n <= k cells get all n - 1 others; padded cells get no edges.
    """
    B, N, _ = positions.shape
    index = torch.zeros(B, N, k, dtype=torch.long)
    valid = torch.zeros(B, N, k, dtype=torch.bool)
    coords = positions.detach().float().cpu().numpy()
    counts = node_mask.sum(1).tolist()
    for b, n in enumerate(counts):
        kk = min(k, n - 1)
        if kk < 1:
            continue
        _, neighbours = cKDTree(coords[b, :n]).query(coords[b, :n], k=kk + 1, workers=-1)
        index[b, :n, :kk] = torch.from_numpy(neighbours[:, 1:].astype(np.int64))
        valid[b, :n, :kk] = True
    return index.to(positions.device), valid.to(positions.device)


def _gather_from(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, N, F), index (B, n, k) into N -> (B, n, k, F)."""
    B, N = values.shape[:2]
    n, k = index.shape[1:]
    # index_select on the flattened batch: torch.gather with an expanded index materialises the
    # expanded index and is far slower.
    flat = (index + torch.arange(B, device=index.device)[:, None, None] * N).reshape(-1)
    return values.reshape(B * N, -1).index_select(0, flat).reshape(B, n, k, values.shape[-1])


# sampling: cells whose per-edge tensors are made at once (see LocalMessagePassing.forward)
INFERENCE_CHUNK_CELLS = 8192


class LocalMessagePassing(nn.Module):
    """m_ij = SiLU(A h_i + B h_j + u log d_ij + v d_ij); h_i += W mean_j m_ij;
    x_i += mean_j tanh(w . m_ij) (x_i - x_j) / (1 + d_ij), with d_ij = |x_i - x_j|.

    The message is one linear layer split over its inputs, so the per-edge work is element-wise
    (A h and B h are computed once per cell): O(N D^2 + N k D) instead of O(N k D^2). Log distance
    spans the scales from neighbouring cells to noise.
    """

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.source = nn.Linear(dim, dim)
        self.neighbour = nn.Linear(dim, dim, bias=False)
        self.log_distance = nn.Parameter(torch.randn(dim) * 0.1)
        self.distance = nn.Parameter(torch.randn(dim) * 0.1)
        self.out = nn.Linear(dim, dim)
        self.position_weight = nn.Linear(dim, 1)
        nn.init.zeros_(self.position_weight.weight)
        nn.init.zeros_(self.position_weight.bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, x: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, N, D), x (B, N, 3), graph from :func:`knn_graph` -> (feature update, coordinate update)."""
        source, neighbour = self.source(h), self.neighbour(h)
        if torch.is_grad_enabled() or h.shape[1] <= INFERENCE_CHUNK_CELLS:
            return self._edges(source, neighbour, x, index, valid, x)
        # Sampling: the per-edge tensors, (B, cells, k, D), are what grows with a section's cells;
        # taken a block of cells at a time they stay the size of one block (nothing is kept for
        # a backward pass), and each cell's result is the same.
        parts = [self._edges(source[:, i:i + INFERENCE_CHUNK_CELLS], neighbour, x[:, i:i + INFERENCE_CHUNK_CELLS],
                             index[:, i:i + INFERENCE_CHUNK_CELLS], valid[:, i:i + INFERENCE_CHUNK_CELLS], x)
                 for i in range(0, h.shape[1], INFERENCE_CHUNK_CELLS)]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _edges(self, source, neighbour, x, index, valid, x_all):
        """Updates of the cells of ``source``/``x``/``index`` (a block of them, or all), their
        neighbours looked up among all cells (``neighbour``, ``x_all``)."""
        offset = x[:, :, None, :] - _gather_from(x_all, index)  # (B, n, k, 3), equivariant
        distance = offset.float().pow(2).sum(-1).add(1e-12).sqrt()[..., None]  # (B, n, k, 1)
        geometry = (distance.add(1e-4).log() * self.log_distance + distance * self.distance).to(source.dtype)
        message = F.silu(source[:, :, None, :] + _gather_from(neighbour, index) + geometry)
        weight = torch.tanh(self.position_weight(message))
        if not bool(valid.all()):  # only slices with fewer than k + 1 cells, and padding
            message = message * valid[..., None]
            weight = weight * valid[..., None]
        count = valid.sum(-1, keepdim=True).clamp(min=1)
        dh = self.dropout(self.out(message.sum(2) / count))
        # Offsets divided by (1 + distance) keep far neighbours (noisy coordinates) from dominating.
        dx = (weight * offset / (1.0 + distance)).sum(2) / count
        return dh, dx.to(x.dtype)
