"""Ancestral sampling with an x0-predicting network: a plain function of (model, schedule, known
values, what to generate, generator).

Between two steps t > s of a (possibly strided) grid, x_s is drawn from the DDPM posterior
q(x_s | x_t, x0_hat): with a = alpha_bar_t / alpha_bar_s,
mean = sqrt(alpha_bar_s) (1 - a) / (1 - alpha_bar_t) x0_hat + sqrt(a) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t,
var = (1 - a) (1 - alpha_bar_s) / (1 - alpha_bar_t). Given modalities stay fixed at their clean
values and are shown to the network at step 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from alphastomics.diffusion.schedule import NoiseSchedule, expression_noise, position_noise
from alphastomics.model.network import masked_centre


@dataclass
class SliceBatch:
    """Model-space tensors of a batch of slices (see alphastomics.data)."""

    expression: torch.Tensor  # (B, N, G) standardised expression
    positions: torch.Tensor  # (B, N, 3) centred, unit-RMS-radius coordinates
    node_mask: torch.Tensor  # (B, N) bool
    gene_mask: torch.Tensor  # (B, G) float, 1 where measured
    dim_mask: torch.Tensor  # (B, 3) float, 1 for the axes the slice uses
    slice_ids: tuple[str, ...] = field(default=())

    def to(self, device) -> "SliceBatch":
        tensors = (self.expression, self.positions, self.node_mask, self.gene_mask, self.dim_mask)
        return SliceBatch(*(t.to(device) for t in tensors), slice_ids=self.slice_ids)


def timestep_grid(total_steps: int, steps: int | None) -> list[int]:
    """Descending steps from T to 1 (``steps`` of them, evenly spaced), followed by 0."""
    steps = total_steps if not steps or steps >= total_steps else steps
    grid = torch.linspace(total_steps, 1, steps).round().long().unique_consecutive().tolist()
    return grid + [0]


def _posterior_step(x_t, x0_hat, ab_t, ab_s, noise):
    a = ab_t / ab_s
    mean = (ab_s.sqrt() * (1 - a) / (1 - ab_t)) * x0_hat + (a.sqrt() * (1 - ab_s) / (1 - ab_t)) * x_t
    var = (1 - a) * (1 - ab_s) / (1 - ab_t)
    return mean + var.clamp(min=0).sqrt() * noise


@torch.no_grad()
def sample(
    model,
    schedule: NoiseSchedule,
    known: SliceBatch,
    generate_expression: bool,
    generate_position: bool,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the requested modalities for ``known``; returns (expression, positions) in model space."""
    device = known.expression.device
    B, N, G = known.expression.shape
    mask = known.node_mask
    expression = known.expression.clone()
    positions = masked_centre(known.positions.clone(), mask)
    if generate_expression:
        expression = expression_noise((B, N, G), mask, generator).to(device)
    if generate_position:
        positions = position_noise((B, N, 3), mask, known.dim_mask, generator).to(device)

    grid = timestep_grid(schedule.steps, steps)
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    for t, s in tqdm(list(zip(grid[:-1], grid[1:])), desc="sampling", disable=not progress, leave=False):
        t_vec = torch.full((B,), t, dtype=torch.long, device=device)
        pred = model(
            expression,
            positions,
            t_vec if generate_expression else zeros,
            t_vec if generate_position else zeros,
            mask,
            known.gene_mask,
        )
        if generate_expression:
            ab = schedule.alpha_bar("expression")
            x0 = pred.expression.float()
            if s == 0:
                expression = x0 * mask[..., None]
            else:
                noise = expression_noise((B, N, G), mask, generator).to(device)
                expression = _posterior_step(expression, x0, ab[t], ab[s], noise) * mask[..., None]
        if generate_position:
            ab = schedule.alpha_bar("position")
            x0 = masked_centre(pred.positions.float() * known.dim_mask[:, None, :], mask)
            if s == 0:
                positions = x0
            else:
                noise = position_noise((B, N, 3), mask, known.dim_mask, generator).to(device)
                positions = masked_centre(_posterior_step(positions, x0, ab[t], ab[s], noise), mask)
    return expression, positions
