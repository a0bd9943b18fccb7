"""Cosine noise schedule (Nichol & Dhariwal 2021) with per-modality exponents, and forward noising.

alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) / cos^2(s/(1+s) * pi/2); modality m uses
alpha_bar(t) ** nu_m (MiDi, Vignac et al. 2023): nu > 1 noises that modality faster, so the other
one is resolved first during sampling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alphastomics.model.network import masked_centre


def cosine_alpha_bar(steps: int, s: float = 0.008) -> torch.Tensor:
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    # Clip so that beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} stays below 0.999 (as in improved DDPM).
    alpha = (alpha_bar[1:] / alpha_bar[:-1]).clamp(min=1e-3)
    return torch.cat([alpha_bar[:1], torch.cumprod(alpha, 0)]).float()


class NoiseSchedule(nn.Module):
    def __init__(self, steps: int, nu_expression: float = 1.0, nu_position: float = 1.0):
        super().__init__()
        self.steps = steps
        base = cosine_alpha_bar(steps)
        self.register_buffer("alpha_bar_expression", base.pow(nu_expression), persistent=False)
        self.register_buffer("alpha_bar_position", base.pow(nu_position), persistent=False)

    def alpha_bar(self, modality: str) -> torch.Tensor:
        return self.alpha_bar_expression if modality == "expression" else self.alpha_bar_position


def randn(shape, generator=None) -> torch.Tensor:
    """Standard normal noise on the CPU. ``generator`` may be one generator or a list with one per
    example of the batch (dimension 0), so that each draw of a batch is reproducible on its own."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator])
    return torch.randn(shape, generator=generator)


def position_noise(shape, node_mask, dim_mask, centred: bool, generator=None) -> torch.Tensor:
    """Gaussian noise on the real cells, restricted to the slice's used axes; ``centred`` (per-slice
    frames) keeps the noised coordinates in the zero-centroid subspace the network works in."""
    eps = randn(shape, generator)
    eps = eps * dim_mask[:, None, :].cpu()
    return masked_centre(eps, node_mask.cpu()) if centred else eps * node_mask[..., None].cpu()


def expression_noise(shape, node_mask, generator=None) -> torch.Tensor:
    return randn(shape, generator) * node_mask[..., None].cpu()


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, alpha_bar_t of shape (B,).

    ``keep`` (broadcastable bool) marks entries that stay at x0 (given axes, e.g. z of a 2D section
    in a shared frame)."""
    a = alpha_bar_t.reshape(-1, *([1] * (x0.dim() - 1)))
    noised = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return noised if keep is None else torch.where(keep, x0, noised)
