"""From slices on disk to model-space examples (expression channels, coordinates in the model frame,
masks); datasets for the two data modes (whole slices, spatial patches) and padded batching."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset, Sampler

from alphastomics.data.batch import SliceBatch
from alphastomics.data.conditions import ConditionVocabulary
from alphastomics.data.expression import ExpressionCodec
from alphastomics.data.frames import CoordinateFrame
from alphastomics.data.places import Place, section_extent
from alphastomics.io.shards import SliceData


@dataclass
class Example:
    """One training or sampling example in model space (unpadded numpy arrays)."""

    expression: np.ndarray  # (n, C) expression channels
    expression_target: np.ndarray  # (n, C) 1 where a channel carries a target
    positions: np.ndarray  # (n, 3) model frame
    gene_mask: np.ndarray  # (G,) bool
    n_dims: int
    slice_id: str
    cell_labels: np.ndarray | None = None  # (n,) condition codes of the cells' labels
    covariates: np.ndarray | None = None  # (K,) condition codes of the slice's covariates
    place: np.ndarray | None = None  # (3,) the network's view of the section's place (alphastomics.data.frames)
    atlas_prior: np.ndarray | None = None  # (n, AtlasReference.width) the training atlas near each cell (alphastomics.data.atlas_prior)

    @property
    def n_cells(self) -> int:
        return self.expression.shape[0]


def make_example(s: SliceData, codec: ExpressionCodec, frame: CoordinateFrame, cells: np.ndarray | None = None,
                 conditions: ConditionVocabulary | None = None, place: Place | None = None,
                 atlas_prior: np.ndarray | None = None) -> Example:
    """``place``: where the section lies along a shared frame's cutting axis (default: the extent of
    all of the slice's cells, also when ``cells`` picks a patch of it). ``atlas_prior``: for all of
    the slice's cells (AtlasReference.prior)."""
    expression = s.expression if cells is None else s.expression[cells]
    coords = s.coords if cells is None else s.coords[cells]
    channels, target = codec.encode(expression, s.gene_mask)
    if frame.places is not None and place is None:
        place = section_extent(s.coords, frame.places.axis)
    example = Example(
        expression=channels,
        expression_target=target,
        positions=frame.to_model(coords, s.n_dims, place),
        gene_mask=s.gene_mask.astype(bool),
        n_dims=s.n_dims,
        slice_id=s.slice_id,
        place=None if frame.places is None else np.asarray(frame.place_features(place), dtype=np.float32),
        atlas_prior=None if atlas_prior is None else (atlas_prior if cells is None else atlas_prior[cells]),
    )
    if conditions is not None and conditions.active:
        types = None if s.cell_types is None else (s.cell_types if cells is None else s.cell_types[cells])
        example.cell_labels = conditions.cell_codes(types, len(channels))
        example.covariates = conditions.covariate_codes(s.covariates)
    return example


def collate(examples: list[Example]) -> SliceBatch:
    """Pad to the largest example; padded cells are masked out everywhere downstream."""
    B = len(examples)
    N = max(e.n_cells for e in examples)
    C = examples[0].expression.shape[1]
    expression = torch.zeros(B, N, C)
    target = torch.zeros(B, N, C)
    positions = torch.zeros(B, N, 3)
    node_mask = torch.zeros(B, N, dtype=torch.bool)
    for b, e in enumerate(examples):
        expression[b, : e.n_cells] = torch.from_numpy(e.expression)
        target[b, : e.n_cells] = torch.from_numpy(e.expression_target)
        positions[b, : e.n_cells] = torch.from_numpy(e.positions)
        node_mask[b, : e.n_cells] = True
    gene_mask = torch.from_numpy(np.stack([e.gene_mask for e in examples])).float()
    dim_mask = torch.tensor([[1.0, 1.0, 1.0 if e.n_dims == 3 else 0.0] for e in examples])
    batch = SliceBatch(expression, target, positions, node_mask, gene_mask, dim_mask, tuple(e.slice_id for e in examples))
    if examples[0].cell_labels is not None:
        batch.cell_labels = torch.zeros(B, N, dtype=torch.long)
        for b, e in enumerate(examples):
            batch.cell_labels[b, : e.n_cells] = torch.from_numpy(e.cell_labels)
        batch.covariates = torch.from_numpy(np.stack([e.covariates for e in examples])).long()
    if examples[0].place is not None:
        batch.places = torch.from_numpy(np.stack([e.place for e in examples]))
    if examples[0].atlas_prior is not None:
        batch.atlas_prior = torch.zeros(B, N, examples[0].atlas_prior.shape[1])
        for b, e in enumerate(examples):
            batch.atlas_prior[b, : e.n_cells] = torch.from_numpy(e.atlas_prior)
    return batch


def drawn_prior(variants: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
    """One of a slice's atlas priors (AtlasReference.training_priors: (V, n, width)), at random."""
    return None if variants is None else variants[int(rng.integers(len(variants)))].astype(np.float32)


class SliceDataset(Dataset):
    """``slice`` mode: each example is one whole slice. ``length`` > number of slices cycles them.
    ``atlas_priors``: per slice, the variants of its atlas prior (V, n, width), one drawn per example."""

    def __init__(self, slices: list[SliceData], codec: ExpressionCodec, frame: CoordinateFrame, length: int = 0,
                 conditions: ConditionVocabulary | None = None, atlas_priors: list[np.ndarray] | None = None,
                 seed: int = 0):
        self.examples = [make_example(s, codec, frame, conditions=conditions) for s in slices]
        self.atlas_priors = atlas_priors
        self.length = max(length, len(self.examples))
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> Example:
        example = self.examples[index % len(self.examples)]
        if self.atlas_priors is None:
            return example
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return dataclasses.replace(example, atlas_prior=drawn_prior(self.atlas_priors[index % len(self.examples)], rng))

    def size(self, index: int) -> int:
        return self.examples[index % len(self.examples)].n_cells


class PatchDataset(Dataset):
    """``cell`` mode: each example is a spatially contiguous patch, the ``cells_per_example``
    nearest cells of a random centre cell, drawn from slices in proportion to their cell counts."""

    def __init__(self, slices: list[SliceData], codec: ExpressionCodec, frame: CoordinateFrame, cells_per_example: int,
                 length: int, seed: int = 0, conditions: ConditionVocabulary | None = None,
                 atlas_priors: list[np.ndarray] | None = None):
        self.slices = slices
        self.atlas_priors = atlas_priors or [None] * len(slices)
        self.conditions = conditions
        self.codec = codec
        self.frame = frame
        self.cells_per_example = cells_per_example
        self.trees = [cKDTree(s.coords[:, : s.n_dims]) for s in slices]
        sizes = np.array([s.coords.shape[0] for s in slices], dtype=float)
        self.weights = sizes / sizes.sum()
        self.length = max(length, len(slices))
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> Example:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        which = int(rng.choice(len(self.slices), p=self.weights))
        s = self.slices[which]
        centre = s.coords[int(rng.integers(s.coords.shape[0])), : s.n_dims]
        k = min(self.cells_per_example, s.coords.shape[0])
        _, cells = self.trees[which].query(centre, k=k)
        return make_example(s, self.codec, self.frame, np.sort(np.atleast_1d(cells)), self.conditions,
                            atlas_prior=drawn_prior(self.atlas_priors[which], rng))

    def size(self, index: int) -> int:
        return self.cells_per_example


class SizeBucketBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar size (less padding), shuffled per epoch, split across ranks.

    Each distributed rank takes every world_size-th batch, so ranks see different slices; the
    batch count is equalised across ranks so collective ops stay in step.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _rank_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist() if self.shuffle else list(range(len(self.dataset)))
        order.sort(key=self.dataset.size)  # stable: random within equal sizes
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def __iter__(self):
        rank, world = self._rank_world()
        batches = self._batches()
        per_rank = math.ceil(len(batches) / world)
        batches = (batches * world)[: per_rank * world]  # pad by repeating so every rank has as many
        yield from batches[rank::world]
        self.epoch += 1  # next epoch differs even if the loop does not call set_epoch

    def __len__(self) -> int:
        _, world = self._rank_world()
        return math.ceil(math.ceil(len(self.dataset) / self.batch_size) / world)
