"""What every peer method reads and writes: the held-out slice and the training slices of a
preprocessed dataset, and a sample file in the format the model's sampler writes
(docs/FORMATS.md), so that ``alphastomics evaluate`` and the report treat every method alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np

from alphastomics.errors import InputError
from alphastomics.heldout import heldout_genes
from alphastomics.io.manifest import load_manifest
from alphastomics.io.sample_file import point_prediction_sample
from alphastomics.io.shards import SliceData, load_slice


class NotApplicable(Exception):
    """The method does not apply to this dataset or mode (e.g. kNN in coordinates without a shared frame)."""


@dataclass
class PeerInputs:
    """The held-out slice, the training slices and the genes both measure."""

    dataset: str
    test: SliceData
    train: list[SliceData]
    frame: str  # per_slice | shared
    shared: np.ndarray  # (G,) bool: measured in the test slice and in every training slice
    heldout: np.ndarray | None = None  # (G,) bool, impute only: the genes hidden in the test slice
    info: dict = field(default_factory=dict)

    @property
    def n_dims(self) -> int:
        return self.test.n_dims

    def train_expression(self, genes: np.ndarray) -> np.ndarray:
        return np.concatenate([s.expression[:, genes] for s in self.train]).astype(np.float32)


def load_inputs(data_dir: str | Path, slice_id: str, train_slices: list[str] | None = None, frame: str = "per_slice",
                mode: str | None = None, holdout_fraction: float = 0.1, holdout_seed: int = 0,
                exclude_slices: list[str] | None = None) -> PeerInputs:
    """The test slice ``slice_id`` and the training slices (default: every other slice of the
    dataset but ``exclude_slices``: the other test and the validation slices, as the model's training).

    ``impute``: the held-out genes are those the model's sampler hides (alphastomics.heldout, same
    fraction and seed), so that every method is scored on the same genes.
    """
    manifest = load_manifest(data_dir)
    slices = manifest.get("slices", {})
    if slice_id not in slices:
        raise InputError(f"{data_dir}/manifest.json: no slice {slice_id!r} (slices: {', '.join(map(repr, sorted(slices)))})")
    excluded = {slice_id, *(exclude_slices or [])}
    train_ids = [s for s in (train_slices or [s for s in slices if s not in excluded]) if s != slice_id]
    missing = [s for s in train_ids if s not in slices]
    if missing:
        raise InputError(f"{data_dir}/manifest.json: no training slice(s) {', '.join(map(repr, missing))}")
    if not train_ids:
        raise InputError(f"{data_dir}: no training slice besides {slice_id!r}")
    test = load_slice(data_dir, slice_id, manifest)
    train = [load_slice(data_dir, s, manifest) for s in train_ids]
    shared = test.gene_mask.astype(bool).copy()
    for s in train:
        shared &= s.gene_mask.astype(bool)
    heldout = None
    if mode == "impute":
        measured = [g for g, m in zip(test.genes, test.gene_mask) if m]
        chosen = set(heldout_genes(measured, holdout_fraction, holdout_seed))
        heldout = np.array([g in chosen for g in test.genes])
        if not (heldout & shared).any():
            raise InputError(f"{data_dir}: no held-out gene of {slice_id!r} is measured in the training slices")
    if not shared.any():
        raise InputError(f"{data_dir}: slice {slice_id!r} and the training slices share no measured gene")
    return PeerInputs(str(manifest.get("dataset", "")), test, train, frame, shared, heldout,
                      {"train_slices": train_ids, "holdout_fraction": holdout_fraction, "holdout_seed": holdout_seed})


def sample_anndata(inputs: PeerInputs, mode: str, method: str, *, expression: np.ndarray | None = None,
                   coordinates: np.ndarray | None = None, embedding: np.ndarray | None = None,
                   extra: dict | None = None) -> ad.AnnData:
    """A sample file of the held-out slice (alphastomics.io.sample_file.point_prediction_sample).

    ``expression`` (N, G) over the dataset's genes: pos_to_expr, the prediction of every measured
    gene; impute, the prediction of the held-out genes (the other genes keep their true values).
    ``coordinates`` (N, d): expr_to_pos. ``embedding``: domains. ``extra``: further uns entries.
    """
    holdout = {}
    if mode == "impute":
        holdout = {"holdout_fraction": inputs.info["holdout_fraction"], "holdout_seed": inputs.info["holdout_seed"],
                   "n_heldout": int(inputs.heldout.sum())}
    return point_prediction_sample(inputs.test, mode, method, dataset=inputs.dataset, coordinate_frame=inputs.frame,
                                   train_slices=inputs.info.get("train_slices", []),
                                   heldout=inputs.heldout if mode == "impute" else None, expression=expression,
                                   coordinates=coordinates, embedding=embedding, info={**holdout, **(extra or {})})


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """z-score every matrix by the training matrix's per-column mean and spread (constant columns: spread 1)."""
    mean = train.mean(0)
    std = train.std(0)
    std[std < 1e-8] = 1.0
    return [(m - mean) / std for m in (train, *others)]
