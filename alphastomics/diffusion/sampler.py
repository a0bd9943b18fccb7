"""Samplers for an x0-predicting network: plain functions of (model, schedule, known values, what
to generate, generator).

Between two steps t > s of a (possibly strided) grid:

- ``ancestral``: x_s is drawn from the DDPM posterior q(x_s | x_t, x0_hat): with a = alpha_bar_t / alpha_bar_s,
  mean = sqrt(alpha_bar_s) (1 - a) / (1 - alpha_bar_t) x0_hat + sqrt(a) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t,
  var = (1 - a) (1 - alpha_bar_s) / (1 - alpha_bar_t);
- ``ddim`` (Song et al. 2021, eta = 0): deterministic, x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps_hat
  with eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t); good with few steps.

``expression_temperature`` scales the fresh noise each ancestral step adds to expression (1: the
model's own distribution; below 1 a sharper one, as the noise scale of protein-structure
diffusion samplers). Coordinates always get the full noise: below 1 it squashes the axis the
model is least sure of (docs/findings/sampling.md).

Given modalities (and given axes, such as z of a 2D section in a shared frame) stay fixed at their
clean values and are shown to the network at step 0.

Guidance, both optional:

- classifier-free (Ho & Salimans 2022): with conditions in ``known`` (cell labels, slice
  covariates) and ``guidance_scale`` w, each step's x0 is x0_uncond + w (x0_cond - x0_uncond):
  w = 0 is unconditional sampling exactly (the conditional pass is not even run), w = 1
  conditional, w > 1 pushes expression further. Positions are never pushed past the conditional
  model (their scale is min(w, 1)): extrapolated positions stretch the tissue along the axis the
  condition informs (docs/findings/conditions.md). ``guidance_interval`` (lo, hi) limits a push
  (w > 1) to the steps with lo < t / T <= hi, the conditional model alone elsewhere (Kynkäänniemi
  et al. 2024: a push at the noisiest steps narrows the samples' diversity, at the cleanest it
  does little);
- gradient guidance of expression (inverse design): ``expression_guidance(x0)`` returns the
  gradient of an objective on the expression x0 estimate, and each step moves that estimate down
  it before the sampler's update.

Entry-level inpainting (``known_entries``, RePaint, Lugmayr et al. 2022): expression entries marked
known are, after every step, replaced by their measured values noised to that step's level, so
the other entries are generated consistently with them; ``start_step`` starts the reverse process
from the measured expression noised to that step (SDEdit) instead of from pure noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from alphastomics.data.batch import SliceBatch
from alphastomics.diffusion.schedule import NoiseSchedule, expression_noise, position_noise
from alphastomics.model.network import DenoiserInput, denoise, masked_centre


def timestep_grid(total_steps: int, steps: int | None) -> list[int]:
    """Descending steps from T to 1 (``steps`` of them, evenly spaced), followed by 0."""
    steps = total_steps if not steps or steps >= total_steps else steps
    grid = torch.linspace(total_steps, 1, steps).round().long().unique_consecutive().tolist()
    return grid + [0]


SAMPLERS = ("ancestral", "ddim")
FULL_INTERVAL = (0.0, 1.0)  # guidance_interval: every noise level


def _ancestral_step(x_t, x0_hat, ab_t, ab_s, noise):
    a = ab_t / ab_s
    mean = (ab_s.sqrt() * (1 - a) / (1 - ab_t)) * x0_hat + (a.sqrt() * (1 - ab_s) / (1 - ab_t)) * x_t
    var = (1 - a) * (1 - ab_s) / (1 - ab_t)
    return mean + var.clamp(min=0).sqrt() * noise


def _ddim_step(x_t, x0_hat, ab_t, ab_s):
    eps_hat = (x_t - ab_t.sqrt() * x0_hat) / (1 - ab_t).clamp(min=1e-8).sqrt()
    return ab_s.sqrt() * x0_hat + (1 - ab_s).sqrt() * eps_hat


def _guided(unconditional, conditional, scale: float):
    """x0 of classifier-free guidance: expression at ``scale``, positions at most at the conditional model's."""
    position_scale = min(scale, 1.0)
    return dataclasses.replace(
        conditional,
        expression=unconditional.expression + scale * (conditional.expression - unconditional.expression),
        positions=unconditional.positions + position_scale * (conditional.positions - unconditional.positions),
    )


def _keep(values: torch.Tensor, given: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor:
    return values if where is None else torch.where(where, given, values)


@torch.no_grad()
def sample(
    model,
    schedule: NoiseSchedule,
    known: SliceBatch,
    generate_expression: bool,
    generate_position: bool,
    centred_positions: bool,
    steps: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: bool = True,
    sampler: str = "ancestral",
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] = FULL_INTERVAL,
    expression_guidance: Callable[[torch.Tensor], torch.Tensor] | None = None,
    known_entries: torch.Tensor | None = None,
    start_step: int | None = None,
    expression_temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the requested modalities for ``known``; returns (expression, positions) in model space.

    ``centred_positions``: per-slice frames, where coordinates live in the zero-centroid subspace.
    ``generator``: one, or one per example of the batch (each draw reproducible alone).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (one of {', '.join(SAMPLERS)})")
    device = known.expression.device
    B, N, C = known.expression.shape
    mask = known.node_mask
    generated_axes = known.dim_mask[:, None, :].bool()
    # Imputation: channels of given genes stay at their clean values while the others are generated.
    given_channels = None
    if known.given_genes is not None:
        given_channels = (known.given_genes[:, model.expression_in.channel_genes] > 0)[:, None, :]
    expression = known.expression.clone()
    positions = masked_centre(known.positions, mask) if centred_positions else known.positions.clone()
    given_positions = positions.clone()
    grid = timestep_grid(schedule.steps, steps)
    ab_e, ab_p = schedule.alpha_bar("expression"), schedule.alpha_bar("position")
    if start_step is not None:
        grid = [start_step, *[t for t in grid if t < start_step]]
    if generate_expression:
        noise = expression_noise((B, N, C), mask.cpu(), generator).to(device)
        if start_step is not None:
            noise = (ab_e[start_step].sqrt() * known.expression + (1 - ab_e[start_step]).sqrt() * noise) * mask[..., None]
        expression = _keep(noise, known.expression, given_channels)
    if generate_position:
        noise = position_noise((B, N, 3), mask, known.dim_mask, centred_positions, generator).to(device)
        positions = torch.where(generated_axes, noise, given_positions)

    zeros = torch.zeros(B, dtype=torch.long, device=device)
    ones = torch.ones(B, device=device)
    conditioned = known.cell_labels is not None
    unconditional = (None, None) if not conditioned else (torch.zeros_like(known.cell_labels), torch.zeros_like(known.covariates))
    for t, s in tqdm(list(zip(grid[:-1], grid[1:])), desc="sampling", disable=not progress, leave=False):
        t_vec = torch.full((B,), t, dtype=torch.long, device=device)
        state = DenoiserInput(expression, positions, t_vec if generate_expression else zeros, t_vec if generate_position else zeros,
                              ab_e[t] * ones if generate_expression else ones, ab_p[t] * ones if generate_position else ones)

        def run(cell_labels, covariates):
            return denoise(model, state, dataclasses.replace(known, cell_labels=cell_labels, covariates=covariates))

        outside_interval = guidance_scale > 1.0 and not guidance_interval[0] < t / schedule.steps <= guidance_interval[1]
        if not conditioned or guidance_scale == 1.0 or outside_interval:
            pred = run(known.cell_labels, known.covariates)
        elif guidance_scale == 0.0:
            pred = run(*unconditional)
        else:
            pred = _guided(run(*unconditional), run(known.cell_labels, known.covariates), guidance_scale)
        if generate_expression:
            x0 = pred.expression.float()
            if expression_guidance is not None:
                x0 = x0 - expression_guidance(x0)
            if s == 0:
                expression = x0 * mask[..., None]
            elif sampler == "ddim":
                expression = _ddim_step(expression, x0, ab_e[t], ab_e[s]) * mask[..., None]
            else:
                noise = expression_noise((B, N, C), mask.cpu(), generator).to(device) * expression_temperature
                expression = _ancestral_step(expression, x0, ab_e[t], ab_e[s], noise) * mask[..., None]
            expression = _keep(expression, known.expression, given_channels)
            if known_entries is not None:
                measured = known.expression if s == 0 else (
                    ab_e[s].sqrt() * known.expression
                    + (1 - ab_e[s]).sqrt() * expression_noise((B, N, C), mask.cpu(), generator).to(device))
                expression = torch.where(known_entries, measured, expression) * mask[..., None]
        if generate_position:
            x0 = pred.positions.float()
            if s == 0:
                positions = torch.where(generated_axes, x0, given_positions)
            else:
                if sampler == "ddim":
                    step = _ddim_step(positions, x0, ab_p[t], ab_p[s])
                else:
                    noise = position_noise((B, N, 3), mask, known.dim_mask, centred_positions, generator).to(device)
                    step = _ancestral_step(positions, x0, ab_p[t], ab_p[s], noise)
                positions = torch.where(generated_axes, step, given_positions) * mask[..., None]
                if centred_positions:
                    positions = masked_centre(positions, mask)
    return expression, positions
