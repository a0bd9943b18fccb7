"""The sample file (``samples/<slice>.<mode>.h5ad``, docs/FORMATS.md): its keys, writing and reading.

Every writer (the model's sampler, the peer methods) builds the file here and every reader
(``evaluate``, the report) reads it here, so that a key is spelled once and a file from any
method reads alike. Neither needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from alphastomics import DOMAINS_MODE, EVALUATION_MODES, GENERATED_BY_MODE, __version__
from alphastomics.errors import InputError
from alphastomics.io.files import atomic_output

if TYPE_CHECKING:
    from alphastomics.io.shards import SliceData

# uns: how the sample was made (mode, method, slice, seeds, ...)
INFO = "alphastomics"
# X holds the true expression; layers: generated expression (N, G)
EXPR_PRED = "expr_pred"
EXPR_PRED_MEAN = "expr_pred_mean"
EXPR_PRED_VAR = "expr_pred_var"
EXPR_PRED_UNGUIDED = "expr_pred_unguided"
EXPR_PRED_MEAN_UNGUIDED = "expr_pred_mean_unguided"
# obsm: coordinates (N, d) and per-cell features
SPATIAL = "spatial"
SPATIAL_PRED = "spatial_pred"
SPATIAL_PRED_CONSENSUS = "spatial_pred_consensus"
SPATIAL_PRED_UNGUIDED = "spatial_pred_unguided"
EMBEDDING = "alphastomics_embedding"
# obsm, joint: every draw of the virtual tissue, (N, S, d) and (N, S, G), draw 0 = spatial_pred / expr_pred
SPATIAL_PRED_DRAWS = "spatial_pred_draws"
EXPR_PRED_DRAWS = "expr_pred_draws"
# var
MEASURED = "measured"
HELDOUT = "heldout"
GENERATED_GENES = "generated"
# obs
SLICE_ID = "slice_id"
PLATFORM = "platform"
CELL_TYPE = "cell_type"
CELL_TYPE_DRAWN = "cell_type_drawn"
CONDITION_CELL_TYPE = "condition_cell_type"
POSITION_UNCERTAINTY = "position_uncertainty"
TARGET_OBJECTIVE = "target_objective"
TARGET_OBJECTIVE_UNGUIDED = "target_objective_unguided"
TARGETED = "targeted"

DEFAULT_METHOD = "alphastomics"


# ----------------------------------------------------------------------------------------------
# writing


def cell_type_column(cell_types) -> pd.Categorical:
    """obs['cell_type'] of a writer: labels as str, unknown stays unknown (missing, never the string "None")."""
    labels = [None if v is None or (np.ndim(v) == 0 and pd.isna(v)) else str(v) for v in cell_types]
    return pd.Categorical(labels, categories=sorted({v for v in labels if v is not None}))


def new_sample(data: SliceData, has_coordinates: bool = True) -> ad.AnnData:
    """The part every sample file shares: the true expression (X), the cells' slice, platform and
    type, the measured genes and, where the cells have any, their true coordinates."""
    obs = pd.DataFrame({SLICE_ID: data.slice_id, PLATFORM: data.platform},
                       index=pd.Index(data.cell_ids.astype(str), name="cell_id"))
    if data.cell_types is not None:
        obs[CELL_TYPE] = cell_type_column(data.cell_types)
    var = pd.DataFrame({MEASURED: data.gene_mask.astype(bool)}, index=pd.Index(data.genes, name="gene"))
    adata = ad.AnnData(X=data.expression.astype(np.float32), obs=obs, var=var)
    if has_coordinates:
        adata.obsm[SPATIAL] = data.coords[:, :data.n_dims].astype(np.float32)
    return adata


def model_sample(data: SliceData, draws, mode: str, frame_kind: str, heldout: np.ndarray | None = None,
                 generated_genes: np.ndarray | None = None, has_coordinates: bool = True,
                 position_uncertainty: np.ndarray | None = None) -> ad.AnnData:
    """The sampler's file of one slice: ``draws`` (alphastomics.draws.Draws) beside the truth.

    ``heldout`` (G,) bool: impute, the genes generated (the other measured genes are given);
    ``generated_genes`` (G,) bool: the genes generated expression covers (default the slice's
    measured genes; a user's file without genes gets every gene the model knows);
    ``has_coordinates``: False for dissociated cells (no obsm['spatial'] then);
    ``position_uncertainty`` (N,): expr_to_pos with several draws, each cell's spread over them.
    """
    d = data.n_dims
    generated = GENERATED_BY_MODE[mode]
    measured = data.gene_mask.astype(bool)
    covered = (measured if generated_genes is None else generated_genes).astype(np.float32)
    adata = new_sample(data, has_coordinates=False)
    if heldout is not None:  # impute: measured genes given, held-out ones generated
        adata.var[HELDOUT] = heldout
        given = measured & ~heldout
        adata.layers[EXPR_PRED] = np.where(given, data.expression, draws.expression[0] * covered).astype(np.float32)
        adata.layers[EXPR_PRED_MEAN] = np.where(given, data.expression, draws.expected_expression * covered).astype(np.float32)
        adata.layers[EXPR_PRED_VAR] = np.where(given, 0.0, draws.expression.var(0) * covered).astype(np.float32)
    elif "expression" in generated:
        adata.layers[EXPR_PRED] = (draws.expression[0] * covered).astype(np.float32)
        if draws.expected_expression is not None:  # pos_to_expr: draws share the cells' positions
            adata.layers[EXPR_PRED_MEAN] = (draws.expected_expression * covered).astype(np.float32)
            adata.layers[EXPR_PRED_VAR] = (draws.expression.var(0) * covered).astype(np.float32)
    else:
        adata.layers[EXPR_PRED] = data.expression.astype(np.float32)
    if has_coordinates:
        adata.obsm[SPATIAL] = data.coords[:, :d].astype(np.float32)
    if "position" in generated:
        adata.obsm[SPATIAL_PRED] = draws.coordinates[0][:, :d].astype(np.float32)
        if draws.consensus_positions is not None:
            adata.obsm[SPATIAL_PRED_CONSENSUS] = draws.consensus_positions[:, :d].astype(np.float32)
        if position_uncertainty is not None:
            adata.obs[POSITION_UNCERTAINTY] = position_uncertainty
        if mode == "joint" and len(draws.seeds) > 1:
            # Each joint draw is a tissue of its own (no cell stands for a true cell, so there is
            # nothing to average): all are kept, and evaluate scores every one of them.
            adata.obsm[SPATIAL_PRED_DRAWS] = draws.coordinates[:, :, :d].transpose(1, 0, 2).astype(np.float32)
            adata.obsm[EXPR_PRED_DRAWS] = (draws.expression * covered).transpose(1, 0, 2).astype(np.float32)
    else:
        adata.obsm[SPATIAL_PRED] = data.coords[:, :d].astype(np.float32)
    adata.obsm[EMBEDDING] = draws.embedding
    adata.uns[INFO] = {
        "mode": mode,
        "method": DEFAULT_METHOD,
        "slice_id": data.slice_id,
        "n_dims": d,
        "generated": generated,
        "coordinate_frame": frame_kind,
        "package_version": __version__,
    }
    if draws.cell_spacing > 0:  # joint: each draw's cells pushed apart to this (alphastomics.draws)
        adata.uns[INFO]["cell_spacing"] = float(draws.cell_spacing)
    return adata


def attach_guidance(adata: ad.AnnData, uns: dict, obs: dict[str, np.ndarray], unguided: ad.AnnData | None) -> None:
    """Conditions and targets of a guided sample: uns entries, per-cell columns, and the same seeds
    drawn without guidance (``layers['expr_pred_unguided']``, ``obsm['spatial_pred_unguided']``; with a
    slice condition, the slice's own value of the covariate, and ``layers['expr_pred_mean_unguided']``)."""
    adata.uns[INFO].update(uns)
    for column, values in obs.items():
        adata.obs[column] = values
    if unguided is not None:
        adata.layers[EXPR_PRED_UNGUIDED] = unguided.layers[EXPR_PRED]
        adata.obsm[SPATIAL_PRED_UNGUIDED] = unguided.obsm[SPATIAL_PRED]
        if uns.get("conditions", {}).get("slice_conditions") and EXPR_PRED_MEAN in unguided.layers:
            adata.layers[EXPR_PRED_MEAN_UNGUIDED] = unguided.layers[EXPR_PRED_MEAN]


def point_prediction_sample(data: SliceData, mode: str, method: str, *, dataset: str, coordinate_frame: str,
                            train_slices: list[str], heldout: np.ndarray | None = None, expression: np.ndarray | None = None,
                            coordinates: np.ndarray | None = None, embedding: np.ndarray | None = None,
                            info: dict | None = None) -> ad.AnnData:
    """A method's file of one held-out slice from a single prediction (the peers).

    ``expression`` (N, G) over the dataset's genes: pos_to_expr, the prediction of every measured
    gene; impute, the prediction of the ``heldout`` genes (the other genes keep their true values).
    A point prediction is its own posterior mean: it goes to ``layers['expr_pred']`` and
    ``layers['expr_pred_mean']``. ``coordinates`` (N, d): expr_to_pos. ``embedding``: domains.
    ``info``: further uns entries.
    """
    d = data.n_dims
    measured = data.gene_mask.astype(bool)
    adata = new_sample(data, has_coordinates=False)
    truth = data.expression.astype(np.float32)
    if mode == "impute":
        adata.var[HELDOUT] = heldout
        prediction = np.where(heldout & measured, np.asarray(expression, np.float32), truth).astype(np.float32)
        adata.layers[EXPR_PRED] = prediction
        adata.layers[EXPR_PRED_MEAN] = prediction
    elif mode == "pos_to_expr":
        prediction = (np.asarray(expression, np.float32) * measured).astype(np.float32)
        adata.layers[EXPR_PRED] = prediction
        adata.layers[EXPR_PRED_MEAN] = prediction
    else:
        adata.layers[EXPR_PRED] = truth
    adata.obsm[SPATIAL] = data.coords[:, :d].astype(np.float32)
    if mode == "expr_to_pos":
        coordinates = np.asarray(coordinates, np.float64)
        if coordinates.shape != (data.coords.shape[0], d) or not np.isfinite(coordinates).all():
            raise ValueError(f"{method}: coordinates of shape {coordinates.shape} (finite: {np.isfinite(coordinates).all()}), "
                             f"expected ({data.coords.shape[0]}, {d}) finite")
        adata.obsm[SPATIAL_PRED] = coordinates.astype(np.float32)
    else:
        adata.obsm[SPATIAL_PRED] = data.coords[:, :d].astype(np.float32)
    if embedding is not None:
        adata.obsm[EMBEDDING] = np.asarray(embedding, np.float32)
    adata.uns[INFO] = {
        "mode": mode,
        "method": method,
        "dataset": dataset,
        "slice_id": data.slice_id,
        "n_dims": d,
        "coordinate_frame": coordinate_frame,
        "train_slices": list(train_slices),
        "trained_on_slice": False,
        "package_version": __version__,
        **(info or {}),
    }
    if GENERATED_BY_MODE.get(mode):  # domains: nothing generated (h5py cannot store an empty list of str)
        adata.uns[INFO]["generated"] = list(GENERATED_BY_MODE[mode])
    return adata


def write_sample(adata: ad.AnnData, out: str | Path) -> None:
    """Write an h5ad under a temporary name in its folder, then rename it into place."""
    # pandas 3 makes every string column a StringArray, which anndata writes only when allowed to
    # (files then need anndata >= 0.11 to read).
    with atomic_output(out) as temp, ad.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(temp)


# ----------------------------------------------------------------------------------------------
# reading


def read_sample(path: str | Path) -> ad.AnnData:
    """Read a sample h5ad, with an InputError naming the file when it is missing or not an h5ad."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sample file not found")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for a bad file
        raise InputError(f"{path}: not a readable h5ad file ({type(err).__name__}: {err})") from None


def sample_info(adata: ad.AnnData) -> dict:
    """uns['alphastomics'] of a sample (empty when it has none)."""
    return dict(adata.uns.get(INFO, {}))


def plain(value):
    """A value of ``uns`` (numpy scalars and arrays inside, as h5py returns them) in plain Python types, as JSON takes them."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def measured_genes(adata: ad.AnnData) -> np.ndarray:
    """(G,) bool: var['measured'], every gene where the file does not say."""
    if MEASURED in adata.var:
        return np.asarray(adata.var[MEASURED], dtype=bool)
    return np.ones(adata.n_vars, dtype=bool)


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def uns_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in np.asarray(value).ravel()]


# How a missing label comes out of files written by other tools (str(None), str(NaN), pandas' NA),
# compared lower-cased and stripped: an unknown type must stay unknown, not become a type of its own.
UNKNOWN_CELL_TYPE_SPELLINGS = frozenset({"", "none", "nan", "<na>"})


def cell_type_labels(column) -> np.ndarray:
    """Cell types of an obs column as an object array of str, None where unknown (missing, or
    spelled as one of ``UNKNOWN_CELL_TYPE_SPELLINGS``)."""
    column = pd.Series(column)
    text = column.astype(object).where(column.notna(), None).map(lambda v: None if v is None else str(v))
    known = text.map(lambda v: v is not None and v.strip().lower() not in UNKNOWN_CELL_TYPE_SPELLINGS).to_numpy(dtype=bool)
    labels = text.to_numpy(dtype=object)
    labels[~known] = None
    return labels


def _require_finite(array: np.ndarray, field: str, source: str) -> None:
    bad = int(np.size(array) - np.isfinite(array).sum())
    if bad:
        raise InputError(f"{source}: {field} holds {bad} non-finite value(s)")


@dataclass
class Sample:
    """The arrays of one sample file that metrics need (expression restricted to measured genes)."""

    mode: str
    generated: list[str]
    slice_id: str
    dataset: str
    method: str
    genes: list[str]
    true_expression: np.ndarray
    generated_expression: np.ndarray
    true_positions: np.ndarray
    generated_positions: np.ndarray
    cell_types: np.ndarray | None  # None where obs['cell_type'] is absent; unknown entries are None
    embedding: np.ndarray | None
    measured_note: str
    mean_expression: np.ndarray | None = None  # layers['expr_pred_mean']: posterior mean over draws
    consensus_positions: np.ndarray | None = None  # obsm['spatial_pred_consensus']: expr_to_pos consensus layout
    coordinate_frame: str = "per_slice"
    train_slices: list[str] = field(default_factory=list)
    drawn_types: np.ndarray | None = None  # joint: obs['cell_type_drawn'], the type each generated cell was drawn with
    # joint: every draw as (expression, coordinates), draw 0 first (obsm['expr_pred_draws'], obsm['spatial_pred_draws'])
    joint_draws: list[tuple[np.ndarray, np.ndarray]] | None = None
    # a model whose sections carry a place: uns['alphastomics']['section_place'] (alphastomics.data.places)
    section_place: dict | None = None

    @property
    def paired(self) -> bool:
        """Generated cell i stands for true cell i (not in joint, where both modalities are generated)."""
        return self.mode != "joint"


def sample_from_anndata(adata, dataset: str | None = None, method: str | None = None, source: str = "sample") -> Sample:
    """Check a sample AnnData against docs/FORMATS.md and extract what the metrics need.

    Raises InputError naming ``source`` and the missing or bad field.
    """
    for key in (SPATIAL, SPATIAL_PRED):
        if key not in adata.obsm:
            raise InputError(f"{source}: obsm['{key}'] is missing")
    if EXPR_PRED not in adata.layers:
        raise InputError(f"{source}: layers['{EXPR_PRED}'] is missing")
    info = sample_info(adata)
    mode = str(info.get("mode", ""))
    if mode not in EVALUATION_MODES:
        raise InputError(f"{source}: uns['{INFO}']['mode'] is {mode!r}, not one of {', '.join(EVALUATION_MODES)}")
    generated = uns_list(info.get("generated")) if "generated" in info else GENERATED_BY_MODE.get(mode, [])
    if not generated and mode != DOMAINS_MODE:
        generated = GENERATED_BY_MODE[mode]
    unknown = set(generated) - {"expression", "position"}
    if unknown:
        raise InputError(f"{source}: uns['{INFO}']['generated'] holds unknown entries {sorted(unknown)}")

    true_positions = np.asarray(adata.obsm[SPATIAL], dtype=np.float64)
    generated_positions = np.asarray(adata.obsm[SPATIAL_PRED], dtype=np.float64)
    if true_positions.ndim != 2 or generated_positions.shape != true_positions.shape:
        raise InputError(f"{source}: obsm['{SPATIAL_PRED}'] has shape {generated_positions.shape}, obsm['{SPATIAL}'] "
                         f"{true_positions.shape}; they must match")
    if adata.layers[EXPR_PRED].shape != adata.shape:
        raise InputError(f"{source}: layers['{EXPR_PRED}'] has shape {adata.layers[EXPR_PRED].shape}, X {adata.shape}; they must match")
    if adata.n_obs < 3:
        raise InputError(f"{source}: {adata.n_obs} cell(s); metrics need at least 3")

    measured = measured_genes(adata)
    measured_note = f"var['{MEASURED}']" if MEASURED in adata.var else f"all genes (var['{MEASURED}'] absent)"
    if not measured.any():
        raise InputError(f"{source}: var['{MEASURED}'] marks no gene as measured")
    if mode == "impute":
        # Only the held-out genes were generated; the given ones are copies of the truth.
        if HELDOUT not in adata.var:
            raise InputError(f"{source}: an impute sample needs var['{HELDOUT}'] (the generated genes)")
        measured = measured & np.asarray(adata.var[HELDOUT], dtype=bool)
        measured_note = f"held-out genes (var['{HELDOUT}'] & var['{MEASURED}'])"
        if not measured.any():
            raise InputError(f"{source}: var['{HELDOUT}'] marks no measured gene")
    true_expression = dense(adata.X[:, measured]).astype(np.float32, copy=False)
    generated_expression = dense(adata.layers[EXPR_PRED][:, measured]).astype(np.float32, copy=False)
    for array, name in ((true_expression, "X"), (generated_expression, f"layers['{EXPR_PRED}']"),
                        (true_positions, f"obsm['{SPATIAL}']"), (generated_positions, f"obsm['{SPATIAL_PRED}']")):
        _require_finite(array, name, source)

    slice_ids = adata.obs[SLICE_ID].astype(str).unique() if SLICE_ID in adata.obs else []
    slice_id = str(info.get("slice_id") or (slice_ids[0] if len(slice_ids) == 1 else Path(source).name.split(".")[0]))
    embedding = np.asarray(adata.obsm[EMBEDDING], dtype=np.float32) if EMBEDDING in adata.obsm else None
    mean_expression = None
    if EXPR_PRED_MEAN in adata.layers:
        mean_expression = dense(adata.layers[EXPR_PRED_MEAN][:, measured]).astype(np.float32, copy=False)
        _require_finite(mean_expression, f"layers['{EXPR_PRED_MEAN}']", source)
    consensus_positions = None
    if SPATIAL_PRED_CONSENSUS in adata.obsm:
        consensus_positions = np.asarray(adata.obsm[SPATIAL_PRED_CONSENSUS], dtype=np.float64)
        if consensus_positions.shape != true_positions.shape:
            raise InputError(f"{source}: obsm['{SPATIAL_PRED_CONSENSUS}'] has shape {consensus_positions.shape}, obsm['{SPATIAL}'] "
                             f"{true_positions.shape}; they must match")
        _require_finite(consensus_positions, f"obsm['{SPATIAL_PRED_CONSENSUS}']", source)
    joint_draws = _joint_draws(adata, measured, true_positions.shape, source) if mode == "joint" else None
    return Sample(
        mode=mode,
        generated=generated,
        slice_id=slice_id,
        dataset=str(dataset or info.get("dataset") or "unknown"),
        method=str(method or info.get("method") or DEFAULT_METHOD),
        genes=[str(g) for g in adata.var_names[measured]],
        true_expression=true_expression,
        generated_expression=generated_expression,
        true_positions=true_positions,
        generated_positions=generated_positions,
        cell_types=cell_type_labels(adata.obs[CELL_TYPE]) if CELL_TYPE in adata.obs else None,
        embedding=embedding,
        measured_note=measured_note,
        mean_expression=mean_expression,
        consensus_positions=consensus_positions,
        coordinate_frame=str(info.get("coordinate_frame") or "per_slice"),
        train_slices=uns_list(info.get("train_slices")),
        drawn_types=adata.obs[CELL_TYPE_DRAWN].astype(str).to_numpy() if mode == "joint" and CELL_TYPE_DRAWN in adata.obs else None,
        joint_draws=joint_draws,
        section_place=dict(info["section_place"]) if isinstance(info.get("section_place"), dict) else None,
    )


def _joint_draws(adata, measured: np.ndarray, positions_shape: tuple, source: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The draws of a joint sample, when it keeps more than one (sample --num-samples S)."""
    keys = (EXPR_PRED_DRAWS, SPATIAL_PRED_DRAWS)
    present = [k in adata.obsm for k in keys]
    if not any(present):
        return None
    if not all(present):
        raise InputError(f"{source}: a joint sample with obsm['{keys[present.index(False)]}'] missing beside "
                         f"obsm['{keys[present.index(True)]}']: both or neither")
    expression = np.asarray(adata.obsm[EXPR_PRED_DRAWS])
    positions = np.asarray(adata.obsm[SPATIAL_PRED_DRAWS], dtype=np.float64)
    n, dims = positions_shape
    if expression.ndim != 3 or expression.shape[::2] != (n, adata.n_vars):
        raise InputError(f"{source}: obsm['{EXPR_PRED_DRAWS}'] has shape {expression.shape}; expected "
                         f"(cells {n}, draws, genes {adata.n_vars})")
    if positions.ndim != 3 or positions.shape[::2] != (n, dims) or positions.shape[1] != expression.shape[1]:
        raise InputError(f"{source}: obsm['{SPATIAL_PRED_DRAWS}'] has shape {positions.shape}; expected "
                         f"(cells {n}, draws {expression.shape[1]}, dims {dims})")
    draws = []
    for i in range(expression.shape[1]):
        draw_expression = expression[:, i, measured].astype(np.float32)
        _require_finite(draw_expression, f"obsm['{EXPR_PRED_DRAWS}'][:, {i}]", source)
        _require_finite(positions[:, i], f"obsm['{SPATIAL_PRED_DRAWS}'][:, {i}]", source)
        draws.append((draw_expression, positions[:, i]))
    return draws
