"""From slices on disk to model-space tensors: standardised expression, normalised coordinates,
masks; datasets for the two data modes (whole slices, spatial patches) and padded batching."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset, Sampler

from alphastomics.diffusion.sampler import SliceBatch
from alphastomics.io.shards import SliceData


@dataclass
class ExpressionScaler:
    """Per-gene standardisation fitted on the training cells of the platforms that measured each gene."""

    mean: np.ndarray  # (G,)
    std: np.ndarray  # (G,)

    @classmethod
    def fit(cls, slices: list[SliceData]) -> "ExpressionScaler":
        G = slices[0].expression.shape[1]
        total, total_sq, count = np.zeros(G), np.zeros(G), np.zeros(G)
        for s in slices:
            measured = s.gene_mask.astype(float)
            total += s.expression.sum(0) * measured
            total_sq += (s.expression.astype(np.float64) ** 2).sum(0) * measured
            count += s.expression.shape[0] * measured
        count = np.maximum(count, 1)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
        std = np.where(std < 1e-6, 1.0, std)  # constant genes: keep them centred, not blown up
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def transform(self, expression: np.ndarray) -> np.ndarray:
        return (expression - self.mean) / self.std

    def inverse(self, expression: np.ndarray) -> np.ndarray:
        return expression * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ExpressionScaler":
        return cls(np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32))


@dataclass
class Frame:
    """Maps source coordinates to the model frame (centred, unit RMS radius) and back."""

    centre: np.ndarray  # (3,)
    scale: float

    @classmethod
    def of(cls, coords: np.ndarray) -> "Frame":
        centre = coords.mean(0)
        scale = float(np.sqrt(((coords - centre) ** 2).sum(1).mean())) or 1.0
        return cls(centre, scale)

    def to_model(self, coords: np.ndarray) -> np.ndarray:
        return (coords - self.centre) / self.scale

    def to_source(self, coords: np.ndarray) -> np.ndarray:
        return coords * self.scale + self.centre


@dataclass
class Example:
    """One training or sampling example in model space (unpadded numpy arrays)."""

    expression: np.ndarray  # (n, G) standardised
    positions: np.ndarray  # (n, 3) model frame
    gene_mask: np.ndarray  # (G,) bool
    n_dims: int
    slice_id: str

    @property
    def n_cells(self) -> int:
        return self.expression.shape[0]


def make_example(s: SliceData, scaler: ExpressionScaler, cells: np.ndarray | None = None) -> Example:
    expression = s.expression if cells is None else s.expression[cells]
    coords = s.coords if cells is None else s.coords[cells]
    return Example(
        expression=(scaler.transform(expression) * s.gene_mask).astype(np.float32),
        positions=Frame.of(coords).to_model(coords).astype(np.float32),
        gene_mask=s.gene_mask.astype(bool),
        n_dims=s.n_dims,
        slice_id=s.slice_id,
    )


def collate(examples: list[Example]) -> SliceBatch:
    """Pad to the largest example; padded cells are masked out everywhere downstream."""
    B = len(examples)
    N = max(e.n_cells for e in examples)
    G = examples[0].expression.shape[1]
    expression = torch.zeros(B, N, G)
    positions = torch.zeros(B, N, 3)
    node_mask = torch.zeros(B, N, dtype=torch.bool)
    for b, e in enumerate(examples):
        expression[b, : e.n_cells] = torch.from_numpy(e.expression)
        positions[b, : e.n_cells] = torch.from_numpy(e.positions)
        node_mask[b, : e.n_cells] = True
    gene_mask = torch.from_numpy(np.stack([e.gene_mask for e in examples])).float()
    dim_mask = torch.tensor([[1.0, 1.0, 1.0 if e.n_dims == 3 else 0.0] for e in examples])
    return SliceBatch(expression, positions, node_mask, gene_mask, dim_mask, tuple(e.slice_id for e in examples))


class SliceDataset(Dataset):
    """``slice`` mode: each example is one whole slice. ``length`` > number of slices cycles them."""

    def __init__(self, slices: list[SliceData], scaler: ExpressionScaler, length: int = 0):
        self.examples = [make_example(s, scaler) for s in slices]
        self.length = max(length, len(self.examples))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Example:
        return self.examples[index % len(self.examples)]

    def size(self, index: int) -> int:
        return self.examples[index % len(self.examples)].n_cells


class PatchDataset(Dataset):
    """``cell`` mode: each example is a spatially contiguous patch, the ``cells_per_example``
    nearest cells of a random centre cell, drawn from slices in proportion to their cell counts."""

    def __init__(self, slices: list[SliceData], scaler: ExpressionScaler, cells_per_example: int, length: int, seed: int = 0):
        self.slices = slices
        self.scaler = scaler
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
        return make_example(s, self.scaler, np.sort(np.atleast_1d(cells)))

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
