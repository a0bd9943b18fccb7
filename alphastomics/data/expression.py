"""Expression in model space: per-gene standardisation and a zero-aware code for zero-inflated genes.

Normalised single-cell expression is zero-inflated (most values of most genes are exact zeros, the
rest sit well away from 0). A Gaussian diffusion over standardised values smears that atom
into a cloud of small positive and negative values, so generated cells are rarely zero and their
spread is too small. The ``zero_aware`` code therefore gives every zero-inflated gene (at least
``ZERO_INFLATED`` of its measured training values exactly 0) a second channel:

- magnitude m (every gene): the value standardised over the gene's non-zero training values for a
  zero-inflated gene (where the value is 0 the magnitude carries no target: input 0, left out of
  the loss), over all its values otherwise;
- presence p (zero-inflated genes only): +1 where the value is > 0, -1 where it is 0 (an "analog
  bit", Chen et al. 2023, diffused like any continuous value and thresholded at 0 when decoded).

Genes that are rarely zero (in situ levels, smoothed data) get the magnitude channel alone: a
presence bit there would only be one more thing to learn, and a badly learnt one zeroes real
values (seen on BDTNP). Decoding gives 0 where p < 0, else the de-standardised magnitude, never
below the gene's smallest training value (0 for normalised counts): values on the data's scale.
The ``standardised`` code (no presence channels) is kept for comparison.

Channels are laid out as [magnitude of every gene | presence of the zero-inflated genes];
``channel_genes`` maps each channel to its gene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CODES = ("zero_aware", "standardised")
# A gene whose measured training values are exactly 0 at least this often gets a presence channel.
ZERO_INFLATED = 0.05


@dataclass
class ExpressionCodec:
    """Maps normalised expression (cells x genes) to model channels and back; fitted on training cells."""

    code: str
    mean: np.ndarray  # (G,) centre of the magnitude channel
    std: np.ndarray  # (G,) scale of the magnitude channel
    floor: np.ndarray  # (G,) smallest training value: decoded values never go below it
    zero_inflated: np.ndarray  # (G,) bool: the gene has a presence channel
    # (G,) fraction of the gene's measured training values that are exactly 0: how sparse the
    # platform is, which tells dropout in new data from true zeros (alphastomics.denoise); None in
    # checkpoints written before it was recorded
    zero_fraction: np.ndarray | None = None

    @property
    def num_genes(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_channels(self) -> int:
        return self.num_genes + int(self.zero_inflated.sum())

    @property
    def channel_genes(self) -> np.ndarray:
        """(C,) the gene of each channel."""
        return np.concatenate([np.arange(self.num_genes), np.flatnonzero(self.zero_inflated)])

    @classmethod
    def fit(cls, expressions: list[np.ndarray], gene_masks: list[np.ndarray], code: str = "zero_aware") -> "ExpressionCodec":
        """Fit on the training slices; a gene counts only in slices whose platform measured it."""
        if code not in CODES:
            raise ValueError(f"unknown expression code {code!r} (one of {', '.join(CODES)})")
        G = expressions[0].shape[1]
        n, zeros = np.zeros(G), np.zeros(G)
        floor = np.full(G, np.inf)
        for values, measured in zip(expressions, gene_masks):
            n += values.shape[0] * measured
            zeros += (values == 0).sum(0) * measured
            floor = np.where(measured, np.minimum(floor, values.min(0, initial=np.inf)), floor)
        zero_inflated = (zeros >= ZERO_INFLATED * np.maximum(n, 1)) & (n > 0) if code == "zero_aware" else np.zeros(G, bool)
        total, total_sq, count = np.zeros(G), np.zeros(G), np.zeros(G)
        for values, measured in zip(expressions, gene_masks):
            values = values.astype(np.float64)
            weights = np.broadcast_to(measured.astype(float), values.shape) * np.where(zero_inflated, values > 0, True)
            total += (values * weights).sum(0)
            total_sq += (values**2 * weights).sum(0)
            count += weights.sum(0)
        count = np.maximum(count, 1.0)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std = np.where(std < 1e-6, 1.0, std)  # constant genes: keep them centred, not blown up
        floor = np.where(np.isfinite(floor), floor, 0.0)
        zero_fraction = np.where(n > 0, zeros / np.maximum(n, 1), 0.0)
        return cls(code, mean.astype(np.float32), std.astype(np.float32), floor.astype(np.float32), zero_inflated,
                   zero_fraction.astype(np.float32))

    def encode(self, expression: np.ndarray, gene_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cells, G) normalised expression -> (channels (cells, C), target mask (cells, C)).

        The target mask marks the entries a loss may compare: measured genes, and for the magnitude
        of a zero-inflated gene only expressed entries. Unmeasured genes are 0 in every channel.
        """
        measured = gene_mask.astype(bool)[None, :]
        expressed = expression > 0
        standardised = (expression - self.mean) / self.std
        carries = measured & (expressed | ~self.zero_inflated)
        magnitude = np.where(carries, standardised, 0.0)
        z = self.zero_inflated
        presence = np.where(expressed[:, z], 1.0, -1.0) * measured[:, z]
        channels = np.concatenate([magnitude, presence], axis=1).astype(np.float32)
        target = np.concatenate([carries, np.broadcast_to(measured[:, z], presence.shape)], axis=1)
        return channels, target.astype(np.float32)

    def decode(self, channels: np.ndarray) -> np.ndarray:
        """(..., C) model channels -> (..., G) expression on the data's scale."""
        G = self.num_genes
        value = np.maximum(channels[..., :G] * self.std + self.mean, self.floor)
        if self.zero_inflated.any():
            absent = np.zeros(value.shape, dtype=bool)
            absent[..., self.zero_inflated] = channels[..., G:] <= 0
            value = np.where(absent, 0.0, value)
        return value.astype(np.float32)

    def decode_expectation(self, channels: np.ndarray) -> np.ndarray:
        """(..., C) expected channel values (a denoiser's x0 estimate: presence bits in [-1, 1]) ->
        (..., G) expected expression: P(expressed) x the de-standardised expected magnitude."""
        probability, magnitude = self.decode_parts(channels)
        return (probability * magnitude).astype(np.float32)

    def decode_parts(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., C) expected channel values -> ((..., G) P(expressed), 1 for genes without a presence
        channel; (..., G) the de-standardised expected magnitude where expressed)."""
        G = self.num_genes
        magnitude = np.maximum(channels[..., :G] * self.std + self.mean, self.floor).astype(np.float32)
        probability = np.ones(magnitude.shape, dtype=np.float32)
        if self.zero_inflated.any():
            probability[..., self.zero_inflated] = np.clip((channels[..., G:] + 1.0) / 2.0, 0.0, 1.0)
        return probability, magnitude

    def to_dict(self) -> dict:
        return {"code": self.code, "mean": self.mean.tolist(), "std": self.std.tolist(), "floor": self.floor.tolist(),
                "zero_inflated": self.zero_inflated.astype(bool).tolist(),
                "zero_fraction": None if self.zero_fraction is None else self.zero_fraction.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ExpressionCodec":
        return cls(d["code"], np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32),
                   np.asarray(d["floor"], dtype=np.float32), np.asarray(d["zero_inflated"], dtype=bool),
                   None if d.get("zero_fraction") is None else np.asarray(d["zero_fraction"], dtype=np.float32))
