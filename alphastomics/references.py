"""Reference rows of a metric table: what real data, or the simplest predictor, scores on the same
metrics as a generated sample, so that every number can be read against something.

- ``joint`` (a virtual tissue has no cell-to-cell correspondence with the test slice): each
  training slice, scored against the test slice by the same distribution metrics as the generated
  cells (method ``real:<slice>``): the spread between real tissues;
- ``pos_to_expr``: the training-mean predictor (method ``training_mean``), every cell given the
  mean training expression: the floor a model of expression at given coordinates must beat.

The reference cells are the model's training slices, read from the dataset's shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alphastomics.errors import InputError
from alphastomics.metrics import distribution, expression, geometry, neighbourhoods, spatial

TRAINING_MEAN = "training_mean"
REAL_PREFIX = "real:"


@dataclass
class ReferenceSlice:
    slice_id: str
    expression: np.ndarray  # (n, g) over the sample's measured genes, in the sample's gene order
    coords: np.ndarray  # (n, d)
    cell_types: np.ndarray | None  # (n,) str; None where the slice has none; unknown entries None


def load_reference(data_dir: str | Path, slice_ids: list[str], genes: list[str], n_dims: int) -> list[ReferenceSlice]:
    """The given slices of a preprocessed dataset, restricted to ``genes`` (the sample's measured genes)."""
    from alphastomics.io.manifest import load_manifest
    from alphastomics.io.shards import load_slice

    manifest = load_manifest(data_dir)
    position = {g: i for i, g in enumerate(manifest["genes"])}
    missing = [g for g in genes if g not in position]
    if missing:
        raise InputError(f"{data_dir}: reference dataset lacks {len(missing)} gene(s) of the sample, e.g. {missing[:3]}")
    columns = np.array([position[g] for g in genes])
    out = []
    for sid in slice_ids:
        data = load_slice(data_dir, sid, manifest)
        types = None
        if data.cell_types is not None:
            types = np.array([None if t is None or str(t) in ("", "None", "nan") else str(t) for t in data.cell_types], dtype=object)
        out.append(ReferenceSlice(sid, data.expression[:, columns], data.coords[:, :n_dims], types))
    return out


class CellTyper:
    """Types cells by a kNN vote of the reference cells with known types, in the PCA space of the
    reference expression: how generated cells (which carry no label) are given a cell type."""

    def __init__(self, reference: list[ReferenceSlice], n_pcs: int, k: int, seed: int):
        pooled = np.concatenate([r.expression for r in reference])
        self.pca = distribution.fit_pca(pooled, n_pcs, seed)
        labelled = [r for r in reference if r.cell_types is not None]
        self.classifier = None
        self.types: list[str] = []
        if labelled:
            known = [np.array([t is not None for t in r.cell_types]) for r in labelled]
            train_x = np.concatenate([r.expression[k_] for r, k_ in zip(labelled, known)])
            train_y = np.concatenate([r.cell_types[k_] for r, k_ in zip(labelled, known)]).astype(str)
            if len(set(train_y)) >= 2:
                self.types = sorted(set(train_y))
                self.classifier = distribution.cell_type_classifier(train_x, train_y, self.pca, k)
        self.k = k

    def project(self, expression: np.ndarray) -> np.ndarray:
        return self.pca.transform(np.asarray(expression, np.float64))

    def predict(self, expression: np.ndarray) -> np.ndarray:
        if self.classifier is None:
            raise ValueError("the reference slices carry no cell types")
        return self.classifier.predict(self.project(expression))


def training_mean_rows(true_expression: np.ndarray, reference: list[ReferenceSlice]) -> tuple[dict, dict]:
    mean = np.concatenate([r.expression for r in reference]).mean(0)
    prediction = np.broadcast_to(mean, true_expression.shape)
    values, how = expression.expression_metrics(true_expression, prediction)
    note = {"method": "every cell predicted as the mean expression of the training cells",
            "training_slices": [r.slice_id for r in reference]}
    return values, {k: {**v, **note} for k, v in how.items()}


def _zscore_correlation(z_a: np.ndarray, z_b: np.ndarray) -> float:
    ok = np.isfinite(z_a) & np.isfinite(z_b)
    if ok.sum() < 2 or np.ptp(z_a[ok]) == 0 or np.ptp(z_b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(z_a[ok], z_b[ok])[0, 1])


def _enrichment(points: np.ndarray, codes: np.ndarray, n_types: int, k: int, permutations: int, seed: int) -> np.ndarray:
    neighbours = neighbourhoods.knn_indices(points, min(k, len(points) - 1))
    return neighbourhoods.nhood_enrichment_zscores(neighbours, codes, n_types, permutations, seed)


def typer_name(k: int) -> str:
    return f"{k}-NN classifier trained on the training cells (PCA of expression)"


def joint_rows(
    true_expression: np.ndarray,
    true_positions: np.ndarray,
    true_types: np.ndarray | None,
    generated_expression: np.ndarray,
    generated_positions: np.ndarray,
    reference: list[ReferenceSlice],
    *,
    n_pcs: int,
    max_cells: int,
    label_k: int,
    morans_k: int,
    permutations: int,
    shape_pairs: int,
    seed: int,
    drawn_types: np.ndarray | None = None,
) -> dict[str, tuple[dict, dict]]:
    """Distribution metrics of the generated slice and of every reference slice against the test slice.

    ``drawn_types``: the cell type each generated cell was drawn with (a joint sample of a model
    conditioned on cell type, obs['cell_type_drawn']), which splits the generated slice's
    composition distance into the draw of types and how well the cells carry them.
    Returns method -> (values, how); the generated slice is under the key ``"generated"``.
    """
    typer = CellTyper(reference, n_pcs, label_k, seed)
    pca = typer.pca
    true_pcs = typer.project(true_expression)
    candidates = {"generated": (generated_expression, generated_positions, None)}
    for r in reference:
        candidates[REAL_PREFIX + r.slice_id] = (r.expression, r.coords, r.cell_types)

    # Cell types: generated cells are typed by a kNN classifier trained on the training cells (in
    # the PCA space); real slices keep their own labels.
    classifier = typer.classifier if true_types is not None else None
    types: list[str] = []
    if classifier is not None:
        types = sorted(set(typer.types) | {str(t) for t in true_types if t is not None})
    true_known = None if true_types is None else np.array([t is not None for t in true_types])
    code = {t: i for i, t in enumerate(types)}

    true_i_graph = spatial.knn_weights(true_positions, min(morans_k, len(true_positions) - 1))
    true_moran = spatial.morans_i(true_i_graph, true_expression)
    z_true = None
    if classifier is not None:
        true_codes = np.array([code[str(t)] for t in true_types[true_known]])
        z_true = _enrichment(true_positions[true_known], true_codes, len(types), morans_k, permutations, seed)

    true_typed = None if classifier is None else np.asarray(typer.predict(true_expression)).astype(str)
    rows: dict[str, tuple[dict, dict]] = {}
    for method, (expr, coords, labels) in candidates.items():
        values: dict[str, float] = {}
        how: dict[str, dict] = {}
        values["expr_energy_distance_pca"] = distribution.energy_distance(
            pca.transform(np.asarray(expr, np.float64)), true_pcs, max_cells, seed)
        how["expr_energy_distance_pca"] = {
            "formula": "energy distance 2E|A-B| - E|A-A'| - E|B-B'| between cells' expression and the test slice's, "
                       f"in the first {pca.n_components_} principal components of the training cells",
            "max_cells_per_set": max_cells, "seed": seed}
        values["expr_knn_two_sample_accuracy"] = distribution.knn_two_sample_accuracy(
            pca.transform(np.asarray(expr, np.float64)), true_pcs, label_k, max_cells, seed)
        how["expr_knn_two_sample_accuracy"] = {
            "formula": "balanced leave-one-out accuracy of a k-NN vote telling these cells from the test slice's cells, "
                       f"in the first {pca.n_components_} principal components of the training cells; 0.5 = indistinguishable",
            "k": label_k, "max_cells_per_set": max_cells, "seed": seed}
        zero_true, zero_this = distribution.zero_fraction(true_expression), distribution.zero_fraction(expr)
        values["expr_zero_fraction_abs_diff"] = abs(zero_this - zero_true)
        how["expr_zero_fraction_abs_diff"] = {"generated_fraction": zero_this, "true_fraction": zero_true}
        values["expr_std_ratio_median"] = distribution.std_ratio_median(true_expression, expr)
        shape_values, shape_how = geometry.shape_metrics(true_positions, coords, shape_pairs, seed)
        values.update(shape_values)
        how.update(shape_how)
        moran = spatial.morans_i(spatial.knn_weights(coords, min(morans_k, len(coords) - 1)), expr)
        values["morans_i_corr"] = _zscore_correlation(true_moran, moran)
        how["morans_i_corr"] = {"formula": "Pearson correlation over genes of Moran's I: true expression on true coordinates "
                                           "vs this slice's expression on its own coordinates", "k": morans_k}
        if classifier is not None:
            if labels is None:
                labels = generated_typed = typer.predict(expr)
                typed_by = typer_name(label_k)
            else:
                typed_by = "the slice's own labels"
            # The classifier mistypes real cells too (the test slice's own cells, typed, are about as far
            # from their labels as another slice is): the same figure with every slice typed by it.
            typed = labels if method == "generated" else typer.predict(expr)
            values["cell_type_composition_l1_typed"] = distribution.composition_l1(
                np.asarray(typed).astype(str), true_typed, types)
            how["cell_type_composition_l1_typed"] = {
                "formula": "sum over cell types of |fraction here - fraction in the test slice|, every cell of both typed "
                           "by the classifier (classifier errors common to both cancel)", "typed_by": typer_name(label_k)}
            labels = np.asarray(labels, dtype=object)
            this_known = np.array([t is not None for t in labels])
            values["cell_type_composition_l1"] = distribution.composition_l1(
                labels[this_known].astype(str), true_types[true_known].astype(str), types)
            how["cell_type_composition_l1"] = {"formula": "sum over cell types of |fraction here - fraction in the test slice|",
                                               "typed_by": typed_by, "n_types": len(types)}
            codes = np.array([code[str(t)] for t in labels[this_known]])
            z = _enrichment(coords[this_known], codes, len(types), morans_k, permutations, seed)
            values["nhood_enrichment_corr"] = _zscore_correlation(z_true, z)
            how["nhood_enrichment_corr"] = {"formula": "Pearson correlation of neighbourhood-enrichment z-scores: "
                                                       "test slice (true types) vs this slice", "typed_by": typed_by,
                                            "k": morans_k, "n_permutations": permutations}
        rows[method] = (values, how)
    if classifier is not None:
        accuracy = float(np.mean(classifier.predict(true_pcs[true_known]) == true_types[true_known].astype(str)))
        values, how = rows["generated"]
        values["cell_type_classifier_accuracy_on_test"] = accuracy
        how["cell_type_classifier_accuracy_on_test"] = {
            "formula": "accuracy of the classifier that types generated cells, on the test slice's true expression and types"}
        # what cell_type_composition_l1 would be for the test slice's own cells: the classifier's
        # share of that figure, which no generator can go below except by errors that cancel
        values["cell_type_classifier_composition_l1_on_test"] = distribution.composition_l1(
            true_typed[true_known], true_types[true_known].astype(str), types)
        how["cell_type_classifier_composition_l1_on_test"] = {
            "formula": "cell_type_composition_l1 of the test slice's own cells typed by the classifier, against their "
                       "labels: the figure a generator of exactly these cells would get", "typed_by": typer_name(label_k)}
        if drawn_types is not None:
            drawn = np.asarray(drawn_types).astype(str)
            # read beside cell_type_classifier_accuracy_on_test: cells that carry their type as well as
            # real cells do are typed as often
            values["cell_type_drawn_accuracy"] = float(np.mean(np.asarray(generated_typed).astype(str) == drawn))
            how["cell_type_drawn_accuracy"] = {
                "formula": "share of generated cells the classifier types as the cell type they were drawn with "
                           "(obs['cell_type_drawn'])", "typed_by": typer_name(label_k)}
            values["cell_type_drawn_composition_l1"] = distribution.composition_l1(
                drawn, true_types[true_known].astype(str), types)
            how["cell_type_drawn_composition_l1"] = {
                "formula": "sum over cell types of |fraction drawn - fraction in the test slice|: the part of "
                           "cell_type_composition_l1 that comes from drawing the types from the training composition"}
            # What real cells of exactly the drawn types would score, typed as often as the test slice's
            # own cells are (the classifier mistypes some types far more than others, so a type can look
            # lost in generated tissue when the classifier loses it): the figure above it is the model's share.
            confusion = distribution.confusion_rows(true_types[true_known], true_typed[true_known], types)
            expected = distribution.composition(drawn, types) @ confusion
            values["cell_type_drawn_composition_l1_expected"] = float(
                np.abs(expected - distribution.composition(true_types[true_known], types)).sum())
            how["cell_type_drawn_composition_l1_expected"] = {
                "formula": "sum over cell types of |(drawn composition x the classifier's confusion matrix on the test "
                           "slice's cells) - fraction in the test slice|: cell_type_composition_l1 expected of real cells "
                           "of exactly the drawn types", "typed_by": typer_name(label_k),
                "types_absent_from_test": "typed as themselves"}
    return rows


def condition_slices(data_dir: str | Path, slice_conditions: dict[str, str], exclude: str) -> list[str]:
    """The slices of a preprocessed dataset (other than ``exclude``) whose recorded covariates
    have every requested value: the real tissue under the condition a perturbation asks for."""
    from alphastomics.io.manifest import load_manifest

    manifest = load_manifest(data_dir)
    return sorted(sid for sid, entry in manifest["slices"].items() if sid != exclude
                  and all(str((entry.get("covariates") or {}).get(k)) == str(v) for k, v in slice_conditions.items()))


@dataclass
class PerturbationShifts:
    """Predicted and observed per-gene mean shifts of a slice drawn under another value of a slice
    covariate, and how well they agree (alphastomics.metrics.design.shift_agreement)."""

    requested: dict[str, str]
    baseline: dict[str, str]  # the slice's own values the draw is compared with ({}: unconditional)
    predicted_from: str  # the two layers the predicted shift is read from
    predicted: np.ndarray
    observed: np.ndarray
    condition_slices: list[str]
    baseline_slices: list[str]
    agreement: dict[str, float]


def perturbation_shifts(adata, slice_id: str, data_dir: str | Path, genes: list[str], measured: np.ndarray, n_dims: int
                        ) -> PerturbationShifts | None:
    """The shifts of a sample file drawn with ``--slice-condition`` (None for any other sample, or
    where no other slice of ``data_dir`` has the requested values). Predicted: mean generated minus
    the mean of the same seeds under the slice's own covariates (posterior means where the sample
    has both, design.shift_layers). Observed: mean of the real cells of the slices with the
    requested values minus that of the slices with the slice's own values (this slice included, so
    that one slice's own differences weigh less), or of this slice alone where it records none."""
    from alphastomics.io.sample_file import EXPR_PRED_UNGUIDED, sample_info
    from alphastomics.metrics.design import shift_agreement, shift_layers

    conditions = dict(sample_info(adata).get("conditions") or {})
    requested = {str(k): str(v) for k, v in dict(conditions.get("slice_conditions") or {}).items()}
    if not requested or EXPR_PRED_UNGUIDED not in adata.layers:
        return None
    baseline = {str(k): str(v) for k, v in dict(conditions.get("baseline_slice_conditions") or {}).items()}
    slices = condition_slices(data_dir, requested, slice_id)
    if not slices:
        return None

    def layer(name):
        values = adata.layers[name][:, measured]
        return np.asarray(values.toarray() if hasattr(values, "toarray") else values, np.float64)

    drawn, baseline_layer = shift_layers(adata.layers)
    true = adata.X[:, measured]
    true = np.asarray(true.toarray() if hasattr(true, "toarray") else true, np.float64)
    condition = np.concatenate([r.expression for r in load_reference(data_dir, slices, genes, n_dims)])
    others = condition_slices(data_dir, baseline, slice_id) if baseline else []
    own = np.concatenate([true, *[r.expression for r in load_reference(data_dir, others, genes, n_dims)]])
    predicted = layer(drawn).mean(0) - layer(baseline_layer).mean(0)
    observed = condition.mean(0) - own.mean(0)
    agreement = shift_agreement(predicted, observed, np.concatenate([condition, own]).std(0))
    return PerturbationShifts(requested, baseline, f"{drawn} − {baseline_layer}", predicted, observed, slices,
                              [slice_id, *others], agreement)
