"""The training objective: how a batch is noised, what is masked or dropped, and the losses.

Kept apart from the training loop (alphastomics.train), as NVlabs/edm keeps its loss apart from
its training loop: the LightningModule holds Lightning's hooks, the moving average and the
optimiser, and asks this module for the losses of a batch.

Each example is drawn in a regime of the training mode (both modalities generated, or one given
and the other generated), at a step t shared by the generated modalities; with
``training.imputation_probability`` some examples that generate expression at given coordinates
get a random part of their genes clean; with ``training.condition_dropout`` conditions are dropped
(classifier-free guidance); with masking (``masking.enable``) random genes and axes of each cell
are replaced by learned values.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from alphastomics.config import Config
from alphastomics.data.batch import SliceBatch
from alphastomics.data.expression import ExpressionCodec
from alphastomics.data.frames import CoordinateFrame
from alphastomics.diffusion.losses import distance_loss, expression_mse, noise_level_weight, position_mse, weighted_mean
from alphastomics.diffusion.schedule import NoiseSchedule, add_noise, expression_noise, position_noise
from alphastomics.model.network import DenoiserInput, Prediction, denoise, masked_centre

# Regimes of an example: which modalities are noised (generated) and which are given.
BOTH, EXPRESSION_ONLY, POSITION_ONLY = 0, 1, 2
MODE_REGIMES = {"joint": (BOTH, EXPRESSION_ONLY, POSITION_ONLY), "pos_to_expr": (EXPRESSION_ONLY,), "expr_to_pos": (POSITION_ONLY,)}


@dataclasses.dataclass
class Noised:
    """One batch as the network sees it in training: the noised state, the per-example weight of
    each modality (1 where it was generated, 0 where given) and the genes given clean (imputation)."""

    state: DenoiserInput
    expression_weight: torch.Tensor  # (B,)
    position_weight: torch.Tensor  # (B,)
    given_genes: torch.Tensor | None  # (B, G) or None


class DiffusionObjective(nn.Module):
    """Losses of a batch for a network. Holds the noise schedule and the learned values that
    replace masked features (masked diffusion), in model space."""

    def __init__(self, config: Config, codec: ExpressionCodec, frame: CoordinateFrame):
        super().__init__()
        self.config = config
        self.centred = frame.kind == "per_slice"
        self.register_buffer("channel_genes", torch.from_numpy(codec.channel_genes), persistent=False)
        self.schedule = NoiseSchedule(config.diffusion.diffusion_steps, config.diffusion.nu_expression,
                                      config.diffusion.nu_position)
        self.expression_mask_value = nn.Parameter(torch.zeros(codec.num_channels))
        self.position_mask_value = nn.Parameter(torch.zeros(3))

    # -- noising -------------------------------------------------------------------------------
    def clean_positions(self, batch: SliceBatch) -> torch.Tensor:
        return masked_centre(batch.positions, batch.node_mask) if self.centred else batch.positions

    def draw(self, batch: SliceBatch, generator: torch.Generator | None, regimes: torch.Tensor | None = None) -> Noised:
        B = batch.expression.shape[0]
        device = batch.expression.device
        allowed = torch.tensor(MODE_REGIMES[self.config.training.training_mode])
        if regimes is None:
            regimes = allowed[torch.randint(len(allowed), (B,), generator=generator)]
        regimes = regimes.to(device)
        generate_expression = (regimes == BOTH) | (regimes == EXPRESSION_ONLY)
        generate_position = (regimes == BOTH) | (regimes == POSITION_ONLY)
        t = torch.randint(1, self.schedule.steps + 1, (B,), generator=generator).to(device)
        t_expression = torch.where(generate_expression, t, torch.zeros_like(t))
        t_position = torch.where(generate_position, t, torch.zeros_like(t))

        x0_position = self.clean_positions(batch)
        eps_e = expression_noise(batch.expression.shape, batch.node_mask.cpu(), generator).to(device)
        eps_p = position_noise(x0_position.shape, batch.node_mask, batch.dim_mask, self.centred, generator).to(device)
        given_genes = self.draw_given_genes(batch, regimes, generator)
        keep_channels = None if given_genes is None else (given_genes[:, self.channel_genes] > 0)[:, None, :]
        alpha_bar_e = self.schedule.alpha_bar("expression")[t_expression]
        alpha_bar_p = self.schedule.alpha_bar("position")[t_position]
        expression_t = add_noise(batch.expression, eps_e, alpha_bar_e, keep=keep_channels)
        position_t = add_noise(x0_position, eps_p, alpha_bar_p, keep=~batch.dim_mask[:, None, :].bool())
        state = DenoiserInput(expression_t, position_t, t_expression, t_position, alpha_bar_e, alpha_bar_p)
        return Noised(state, generate_expression.float(), generate_position.float(), given_genes)

    def dropped_conditions(self, batch: SliceBatch, generator):
        """Condition codes with dropout: whole examples (every label and covariate) and single cells'
        labels set to 0 ("no condition") with probability training.condition_dropout, so the model
        also learns to generate without them (classifier-free guidance)."""
        if batch.cell_labels is None:
            return None, None
        p = self.config.training.condition_dropout
        B, N = batch.cell_labels.shape
        keep_example = (torch.rand(B, generator=generator) >= p).to(batch.cell_labels.device)
        keep_cell = (torch.rand(B, N, generator=generator) >= p).to(batch.cell_labels.device)
        labels = batch.cell_labels * (keep_example[:, None] & keep_cell)
        covariates = batch.covariates * keep_example[:, None]
        return labels, covariates

    def dropped_prior(self, batch: SliceBatch, generator) -> torch.Tensor | None:
        """The atlas prior with whole examples' set to 0 (none) with probability
        training.atlas_prior_dropout: the model also learns to do without it."""
        if batch.atlas_prior is None:
            return None
        B = batch.atlas_prior.shape[0]
        keep = (torch.rand(B, generator=generator) >= self.config.training.atlas_prior_dropout).to(batch.atlas_prior.device)
        return batch.atlas_prior * keep[:, None, None].to(batch.atlas_prior.dtype)

    def draw_given_genes(self, batch: SliceBatch, regimes: torch.Tensor, generator) -> torch.Tensor | None:
        """Imputation training: in some examples that generate expression at given coordinates, a
        random 30-95% of the measured genes are given clean, and only the others are generated and
        scored. None when no example of the batch does it."""
        p = self.config.training.imputation_probability
        B, G = batch.gene_mask.shape
        chosen = (torch.rand(B, generator=generator) < p).to(regimes.device) & (regimes == EXPRESSION_ONLY)
        if p == 0 or not bool(chosen.any()):
            return None
        fraction = 0.3 + 0.65 * torch.rand(B, 1, generator=generator)
        given = (torch.rand(B, G, generator=generator) < fraction).to(batch.gene_mask.device)
        return (given & chosen[:, None] & (batch.gene_mask > 0)).float()

    def feature_masks(self, batch: SliceBatch, generator):
        """Per cell, a random subset of genes (all channels of a gene) and of coordinate axes (masked diffusion)."""
        m = self.config.masking
        B, N, G = batch.expression.shape[0], batch.expression.shape[1], batch.gene_mask.shape[1]
        mask_genes = (torch.rand((B, N, G), generator=generator) < m.expression_mask_ratio).to(batch.expression.device)
        mask_p = (torch.rand(batch.positions.shape, generator=generator) < m.position_mask_ratio).to(batch.expression.device)
        mask_genes &= batch.node_mask[..., None] & batch.gene_mask[:, None, :].bool()
        mask_p &= batch.node_mask[..., None] & batch.dim_mask[:, None, :].bool()
        mask_e = mask_genes[..., self.channel_genes]
        return mask_e, mask_p

    # -- losses --------------------------------------------------------------------------------
    def losses(self, network, batch: SliceBatch, generator: torch.Generator | None = None, regimes=None,
               masking: bool = False) -> dict[str, torch.Tensor]:
        """The weighted losses of ``network`` on ``batch`` and their total (``loss``)."""
        c = self.config
        noised = self.draw(batch, generator, regimes)
        state, w_e, w_p, given_genes = noised.state, noised.expression_weight, noised.position_weight, noised.given_genes
        mask_e = mask_p = None
        if masking:
            mask_e, mask_p = self.feature_masks(batch, generator)
            state = dataclasses.replace(
                state,
                expression=torch.where(mask_e, self.expression_mask_value.to(state.expression.dtype)[None, None, :], state.expression),
                positions=torch.where(mask_p, self.position_mask_value.to(state.positions.dtype)[None, None, :], state.positions))
        alpha_bar_e, alpha_bar_p = state.expression_alpha_bar, state.position_alpha_bar
        cell_labels, covariates = self.dropped_conditions(batch, generator)
        pred = denoise(network, state, dataclasses.replace(batch, given_genes=given_genes, cell_labels=cell_labels,
                                                           covariates=covariates, atlas_prior=self.dropped_prior(batch, generator)))
        target_mask = batch.expression_target
        if given_genes is not None:  # given genes are inputs, not predictions
            target_mask = target_mask * (1.0 - given_genes[:, self.channel_genes])[:, None, :]
        x0_position = self.clean_positions(batch)
        # Per-example weights: 0 where the modality was given, else the noise-level weight.
        lw_e = w_e * noise_level_weight(alpha_bar_e, c.loss.weighting, c.loss.min_snr_gamma)
        lw_p = w_p * noise_level_weight(alpha_bar_p, c.loss.weighting, c.loss.min_snr_gamma)
        distances = distance_loss(
            pred.positions * batch.dim_mask[:, None, :],
            x0_position * batch.dim_mask[:, None, :],
            batch.node_mask,
            w_p,
            c.loss.exact_distance_max_cells,
            c.loss.distance_knn,
            c.loss.distance_random_pairs_per_cell,
            generator,
        )
        losses = {
            "expression": weighted_mean(expression_mse(pred.expression, batch.expression, target_mask, batch.node_mask), lw_e),
            "position": weighted_mean(position_mse(pred.positions, x0_position, batch.node_mask, batch.dim_mask), lw_p),
            "distance": weighted_mean(distances, lw_p),
            "moe_aux": pred.aux_loss,
        }
        total = (c.loss.lambda_expression * losses["expression"] + c.loss.lambda_position * losses["position"]
                 + c.loss.lambda_distance * losses["distance"])
        if c.model.use_moe:
            total = total + c.model.moe_aux_loss_weight * losses["moe_aux"]
        if masking:
            losses["masked_reconstruction"] = masked_reconstruction_loss(pred, batch, x0_position, mask_e, mask_p)
            total = total + c.masking.lambda_masked_reconstruction * losses["masked_reconstruction"]
        losses["loss"] = total
        # A modality that no example of the batch generated has no loss to report (not a zero).
        if w_e.sum() == 0:
            del losses["expression"]
        if w_p.sum() == 0:
            del losses["position"], losses["distance"]
        if not c.model.use_moe:
            del losses["moe_aux"]
        return losses


def masked_reconstruction_loss(pred: Prediction, batch: SliceBatch, x0_position, mask_e, mask_p) -> torch.Tensor:
    """MSE over masked entries only: masked expression channels that carry a target, and masked axes of coordinates."""
    mask_e = mask_e * batch.expression_target
    e = ((pred.expression.float() - batch.expression.float()) ** 2 * mask_e).sum()
    p = ((pred.positions.float() - x0_position.float()) ** 2 * mask_p).sum()
    return (e + p) / (mask_e.sum() + mask_p.sum()).clamp(min=1)
