"""Typed configuration of model, diffusion, losses, training, sampling and evaluation.

One YAML file (``config/config.yaml``) holds everything; this module reads the sections the package
needs into dataclasses, rejects unknown keys and bad values with a message naming the key, and
applies command-line overrides. The pipeline part (``datasets:``) is validated by the JSON schema
``alphastomics/config.schema.yaml`` (the same file Snakemake validates against).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from alphastomics import MODES, TRAINING_MODES
from alphastomics.errors import ConfigError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")


@dataclass
class ModelConfig:
    hidden_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    time_embedding: str = "sinusoidal"  # sinusoidal | learned
    use_gated_attention: bool = False
    gate_type: str = "headwise"  # headwise | elementwise
    use_moe: bool = False
    num_experts: int = 4
    moe_top_k: int = 2
    moe_aux_loss_weight: float = 0.01
    ffn_multiplier: int = 4
    dropout: float = 0.0
    # Message passing over each cell's k nearest neighbours in every block (0: global attention only).
    local_neighbours: int = 8
    # zero_aware: presence bit + magnitude per gene (exact zeros); standardised: one channel per gene.
    expression_code: str = "zero_aware"
    # Conditions (classifier-free guidance at sampling): per-cell cell type, per-slice covariates.
    condition_on_cell_type: bool = False
    slice_covariates: list[str] = field(default_factory=list)
    # Add the conditions' embedding before every block, not only at the input, so that a cell's
    # label is not averaged away by its neighbours deep in the network (docs/conditions.md).
    # The bundled config sets it; False here so that models saved before it existed still load.
    condition_every_block: bool = False
    # Shared frames: cells whose positions are given are shown the mean expression of this many
    # nearest training cells (alphastomics.data.atlas_prior; 0: off, as models saved before it;
    # "auto": the number that best predicts each training section from the others).
    atlas_prior_neighbours: int | str = 0

    def validate(self) -> None:
        _check_against_schema("model", self)  # bounds first: num_heads = 0 must not reach the modulo below
        _check_choice("model.time_embedding", self.time_embedding, ("sinusoidal", "learned"))
        _check_choice("model.gate_type", self.gate_type, ("headwise", "elementwise"))
        _check_choice("model.expression_code", self.expression_code, ("zero_aware", "standardised"))
        if self.local_neighbours < 0:
            raise ConfigError("model.local_neighbours must be 0 (off) or positive")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"model.hidden_dim ({self.hidden_dim}) must be divisible by model.num_heads ({self.num_heads})")
        if self.use_moe and not 1 <= self.moe_top_k <= self.num_experts:
            raise ConfigError(f"model.moe_top_k ({self.moe_top_k}) must be between 1 and model.num_experts ({self.num_experts})")


@dataclass
class DiffusionConfig:
    diffusion_steps: int = 500
    # Per-modality schedule exponents (as in MiDi): alpha_bar_m(t) = alpha_bar(t) ** nu_m.
    nu_expression: float = 1.0
    nu_position: float = 1.0

    def validate(self) -> None:
        _check_against_schema("diffusion", self)
        if self.diffusion_steps < 2:
            raise ConfigError("diffusion.diffusion_steps must be at least 2")
        for name in ("nu_expression", "nu_position"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"diffusion.{name} must be positive")


@dataclass
class LossConfig:
    lambda_expression: float = 1.0
    # Coordinates: MSE of x0 in the frame of the noisy input (equivariant network: well defined),
    # plus the rigid-invariant MSE of pairwise distances.
    lambda_position: float = 1.0
    lambda_distance: float = 0.1
    # Weight of each example's x0 losses by its noise level: min_snr (min(SNR, gamma)) or uniform.
    weighting: str = "min_snr"
    min_snr_gamma: float = 5.0
    exact_distance_max_cells: int = 4096
    distance_knn: int = 16
    distance_random_pairs_per_cell: int = 64

    def validate(self) -> None:
        _check_against_schema("loss", self)
        if self.lambda_expression == 0 and self.lambda_position == 0:
            raise ConfigError("loss.lambda_expression and loss.lambda_position are both 0: nothing would be learned")


@dataclass
class MaskingConfig:
    enable: bool = False
    expression_mask_ratio: float = 0.15
    position_mask_ratio: float = 0.15
    lambda_masked_reconstruction: float = 0.5

    def validate(self) -> None:
        _check_against_schema("masking", self)
        for name in ("expression_mask_ratio", "position_mask_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"masking.{name} must be in [0, 1)")


@dataclass
class TrainingConfig:
    training_mode: str = "joint"
    data_mode: str = "slice"  # slice | cell
    cells_per_example: int = 1024  # cell mode: size of each spatial patch
    batch_size: int = 1
    epochs: int = 200
    max_steps: int = -1
    examples_per_epoch: int = 0  # 0: one pass over the training slices
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    strategy: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32-true"
    seed: int = 0
    # Exponential moving average of the weights, used for validation and exported for sampling (0: off).
    ema_decay: float = 0.999
    lr_schedule: str = "cosine"  # cosine (decay to 10% after warm-up) | constant
    warmup_steps: int = 100
    # Share of expression-generating examples (positions given) where a random part of the genes is
    # given clean too: how the model learns to impute genes from the others.
    imputation_probability: float = 0.3
    # Share of examples trained with their conditions dropped (and of cells with their label dropped).
    condition_dropout: float = 0.1
    # Share of examples trained without the atlas prior (model.atlas_prior_neighbours), so that a
    # cell the atlas says nothing about is still handled.
    atlas_prior_dropout: float = 0.2
    val_every_n_epochs: int = 10
    num_workers: int = 0
    wandb: bool = False
    exp_name: str = "alphastomics"

    def validate(self) -> None:
        _check_against_schema("training", self)
        _check_choice("training.training_mode", self.training_mode, TRAINING_MODES)
        _check_choice("training.data_mode", self.data_mode, ("slice", "cell"))
        _check_choice("training.strategy", self.strategy, STRATEGIES)
        _check_choice("training.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("training.ema_decay must be in [0, 1) (0: no moving average)")
        if self.batch_size < 1:
            raise ConfigError("training.batch_size must be at least 1")
        if self.lr <= 0:
            raise ConfigError("training.lr must be positive")


JOINT_CELL_TYPES = ("training", "none")


@dataclass
class SamplingConfig:
    modes: list[str] = field(default_factory=lambda: list(TRAINING_MODES))
    # 0: all diffusion steps. The defaults are what `alphastomics sample` uses for a model whose
    # training config did not set them: a strided grid of steps scores about as well as every step
    # at a fraction of the time, and every step with many draws is too slow for a CPU
    # (docs/findings/sampling.md).
    steps: int = 50
    sampler: str = "ancestral"  # ancestral | ddim (deterministic, good with few steps)
    # Ancestral sampler: scale of the noise each step adds to generated expression (1: the model's
    # own distribution). A demo-size model spreads expression too wide at 1; a lower temperature
    # brings generated expression closer to real cells on most datasets but lets the tissue's
    # distance distribution stray further. 0.9 takes part of the expression gain for part of the
    # shape cost (docs/findings/sampling.md). Coordinates always get the full noise.
    expression_temperature: float = 0.9
    seed: int = 0
    # Draws per slice; the sample file keeps the first draw and the mean of all (expr_pred_mean).
    num_samples: int = 4
    # joint: virtual tissues drawn per slice. Each is kept whole in the sample file and scored (N x G
    # values per draw), so joint has its own count: 32 draws for expr_to_pos's consensus are cheap
    # to keep, 32 tissues of 100k cells are not.
    joint_num_samples: int = 4
    # Starting noises averaged for the posterior mean of expression (expr_pred_mean): one network
    # evaluation each, so many more than num_samples cost less than one extra draw, and the mean's
    # own noise shrinks with their number (docs/findings/sampling.md).
    posterior_mean_draws: int = 32
    # impute: the fraction of a slice's measured genes hidden and generated (same genes for every
    # method: alphastomics.heldout), chosen with this seed.
    holdout_fraction: float = 0.1
    holdout_seed: int = 0
    # joint, on a model conditioned on cell type: ``training`` gives the cells the training
    # composition (counts rounded, each cell's type drawn by the seed) and generates the tissue
    # given those types (types, then tissue); ``none`` samples unconditionally. Given their types,
    # the cells arrange themselves much more as in real tissue (docs/findings/conditions.md).
    joint_cell_types: str = "training"
    # expr_to_pos in a shared frame: lay the slice out among up to this many cells of the training
    # slices (their expression only; their generated positions are dropped); 0: alone. A trade, so
    # off by default: cells land nearer their true place, but the slice's thinnest axis thins and
    # distances rank a little worse (docs/findings/sampling.md).
    atlas_context_cells: int = 0
    # expr_to_pos and impute: the per-cell estimates (consensus layout, posterior mean of the hidden
    # genes) smoothed over the cells' nearest neighbours in their given expression
    # (alphastomics.expression_graph); rounds per mode, 0: off. Chosen on the every-slice folds
    # (docs/findings/model.md, "Neighbours in expression").
    expression_graph_neighbours: int = 10
    expression_graph_components: int = 30
    # expr_to_pos: each cell's neighbours in expression chosen among its this many nearest cells in
    # the consensus layout (0: anywhere in the slice)
    expression_graph_pool: int = 150
    layout_smoothing_steps: int = 20
    impute_smoothing_steps: int = 3

    def draws(self, mode: str) -> int:
        """Draws per slice of a mode, when the command line does not say."""
        return self.joint_num_samples if mode == "joint" else self.num_samples

    def smoothing_steps(self, mode: str) -> int:
        """Rounds of smoothing over the expression graph in a mode (0 where nothing is given to build it from)."""
        return {"expr_to_pos": self.layout_smoothing_steps, "impute": self.impute_smoothing_steps}.get(mode, 0)

    def validate(self) -> None:
        _check_against_schema("sampling", self)
        for mode in self.modes:
            _check_choice("sampling.modes", mode, MODES)
        if self.num_samples < 1 or self.joint_num_samples < 1:
            raise ConfigError("sampling.num_samples and sampling.joint_num_samples must be at least 1")
        if self.posterior_mean_draws < 1:
            raise ConfigError("sampling.posterior_mean_draws must be at least 1")
        if self.expression_graph_neighbours < 1 or self.expression_graph_components < 1:
            raise ConfigError("sampling.expression_graph_neighbours and sampling.expression_graph_components must be at least 1")
        if self.expression_graph_pool < 0:
            raise ConfigError("sampling.expression_graph_pool must be at least 0 (0: neighbours anywhere in the slice)")
        if self.layout_smoothing_steps < 0 or self.impute_smoothing_steps < 0:
            raise ConfigError("sampling.layout_smoothing_steps and sampling.impute_smoothing_steps must be at least 0 (0: off)")
        check_expression_temperature(self.expression_temperature, "sampling.expression_temperature")
        _check_choice("sampling.sampler", self.sampler, ("ancestral", "ddim"))
        _check_choice("sampling.joint_cell_types", self.joint_cell_types, JOINT_CELL_TYPES)


def check_expression_temperature(value: float, name: str) -> None:
    """The sampler's expression noise scale (config key or command-line flag ``name``): at 0 the
    draws would not be samples at all, and past 2 they are mostly noise."""
    if not 0.0 < value <= 2.0:
        raise ConfigError(f"{name} must be in (0, 2] (1: the model's own distribution), not {value}")


@dataclass
class EvaluationConfig:
    knn_k: list[int] = field(default_factory=lambda: [5, 10, 20])
    morans_k: int = 10
    contact_quantiles: list[float] = field(default_factory=lambda: [0.01, 0.1])
    max_cells_exact: int = 20000
    sample_size: int = 5000
    leiden_resolution: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        _check_against_schema("evaluation", self)
        if self.sample_size < 3:  # stricter than the schema: every metric needs at least 3 cells
            raise ConfigError(f"evaluation.sample_size: {self.sample_size} is less than 3 (metrics need at least 3 cells)")


@dataclass
class Config:
    """Everything the package needs except the dataset list (which the workflow owns)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def validate(self) -> "Config":
        for f in fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PIPELINE_KEYS = {"datasets", "results_dir", "methods"}


@functools.lru_cache(maxsize=1)
def _schema_sections() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())["properties"]


def _check_against_schema(section: str, values: Any) -> None:
    """Check one section's values against its entry in the JSON schema.

    The schema is the file Snakemake validates config/config.yaml against; checking the
    dataclasses against the same file makes `alphastomics train/evaluate/sample` refuse exactly
    what the pipeline refuses, and a field added to both is checked without a second copy of its
    bounds. The error names the key (and list position), e.g. ``evaluation.contact_quantiles[0]``.
    """
    import jsonschema

    rules = _schema_sections().get(section, {}).get("properties", {})
    for key, value in asdict(values).items():
        if key not in rules:
            continue
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(rules[key]).iter_errors(value))
        if error is not None:
            where = "".join(f"[{p}]" for p in error.absolute_path)
            raise ConfigError(f"{section}.{key}{where}: {error.message}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(map(str, choices))}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Coerce YAML scalars to the default's type (YAML reads 1e-3 as a string)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if value == "auto":  # numbers the tool can choose itself; the schema says which fields allow it
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(default, int):
            if number != int(number):
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
            return int(number)
        return number
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _section_from_dict(cls, name: str, data: dict[str, Any] | None):
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {data!r}")
    instance = cls()
    known = {f.name for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{name}.{key}' (known: {', '.join(sorted(known))})")
        setattr(instance, key, _coerce(f"{name}.{key}", value, getattr(instance, key)))
    return instance


def config_from_dict(data: dict[str, Any]) -> Config:
    sections = {f.name: f.type for f in fields(Config)}
    for key in data:
        if key not in sections and key not in PIPELINE_KEYS:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(set(sections) | PIPELINE_KEYS))})")
    kwargs = {}
    for f in fields(Config):
        cls = type(f.default_factory())
        kwargs[f.name] = _section_from_dict(cls, f.name, data.get(f.name))
    return Config(**kwargs).validate()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None) -> Config:
    """Read a config file (or defaults when ``path`` is None) into a validated :class:`Config`."""
    if path is None:
        return Config().validate()
    try:
        return config_from_dict(read_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Apply ``{"section.key": value}`` overrides (None values are skipped) and re-validate."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        section_name, key = dotted.split(".", 1)
        section = getattr(config, section_name)
        if key not in {f.name for f in fields(section)}:
            raise ConfigError(f"unknown config key '{dotted}'")
        setattr(section, key, _coerce(dotted, value, getattr(section, key)))
    return config.validate()


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_digest(config: Config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def replace_section(config: Config, **sections: Any) -> Config:
    return dataclasses.replace(config, **sections)
