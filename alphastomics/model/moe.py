"""Feed-forward layers: dense MLP and a top-k routed mixture of experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(h), h.new_zeros(())


class MixtureOfExperts(nn.Module):
    """Top-k routing per cell over ``num_experts`` feed-forward experts (Switch/GShard style).

    Returns the output and a load-balancing auxiliary loss, E * sum_e f_e * P_e, where f_e is the
    fraction of routed (cell, slot) assignments that went to expert e and P_e the mean router
    probability of e (Fedus et al. 2021); it equals 1 for perfectly uniform routing.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, dropout: float = 0.0):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(dim, hidden, dropout) for _ in range(num_experts))

    def forward(self, h: torch.Tensor, node_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = h.shape
        tokens = h.reshape(-1, shape[-1])
        valid = node_mask.reshape(-1) if node_mask is not None else torch.ones(tokens.shape[0], dtype=torch.bool, device=h.device)
        probs = F.softmax(self.router(tokens).float(), dim=-1)
        top_p, top_e = probs.topk(self.top_k, dim=-1)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token_idx, slot = torch.nonzero((top_e == e) & valid[:, None], as_tuple=True)
            if token_idx.numel() == 0:
                continue
            y, _ = expert(tokens[token_idx])
            out.index_add_(0, token_idx, (y * top_p[token_idx, slot, None]).to(out.dtype))
        n_valid = valid.sum().clamp(min=1)
        assigned = F.one_hot(top_e, self.num_experts).sum(dim=1).float()  # (T, E)
        fraction = (assigned * valid[:, None]).sum(0) / (n_valid * self.top_k)
        mean_prob = (probs * valid[:, None]).sum(0) / n_valid
        aux = self.num_experts * (fraction * mean_prob).sum()
        return out.reshape(shape), aux
