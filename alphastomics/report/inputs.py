"""Reading a report's inputs: metric tables, sample files, the training log and its summary.

Everything here returns plain data (frames, arrays, :class:`Sample`); the tables and figure
sections are made from it by ``tables``, ``sections`` and ``provenance``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphastomics import GENERATED_BY_MODE, MODES
from alphastomics.errors import InputError
from alphastomics.io import sample_file
from alphastomics.io.metric_tables import TABLE_COLUMNS, read_metric_table
from alphastomics.io.sample_file import DEFAULT_METHOD, cell_type_labels
from alphastomics.report.plots import UNKNOWN_LABEL

log = logging.getLogger(__name__)

METRIC_COLUMNS = TABLE_COLUMNS
MAIN_METHOD = DEFAULT_METHOD  # listed first in every table


def load_metrics(paths: list[str | Path]) -> pd.DataFrame:
    frames = []
    for p in paths:
        df = read_metric_table(p)
        for c in ("dataset", "slice", "mode", "method", "metric"):
            df[c] = df[c].astype(str)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return pd.concat(frames, ignore_index=True)


@dataclass
class Sample:
    path: Path
    slice_id: str
    mode: str
    method: str
    seed: Any
    generated: list[str]
    meta: dict
    true_pos: np.ndarray
    pred_pos: np.ndarray | None
    cell_types: np.ndarray | None
    adata: Any = field(repr=False, default=None)

    @property
    def label(self) -> str:
        return f"{self.slice_id} · {self.mode} · {self.method}"

    @property
    def gen_positions(self) -> bool:
        return "position" in self.generated and self.pred_pos is not None

    @property
    def gen_expression(self) -> bool:
        return "expression" in self.generated and sample_file.EXPR_PRED in self.adata.layers



def load_sample(path: str | Path, slice_ids_by_key: dict[str, str] | None = None) -> Sample:
    """One sample file. Where it does not record its slice, the slice is taken from ``obs`` or
    from the file name, whose first part is the slice's file key (``slice_ids_by_key`` maps
    it back to the user's id)."""
    path = Path(path)
    adata = sample_file.read_sample(path)
    if sample_file.SPATIAL not in adata.obsm:
        raise InputError(f"sample file {path} has no obsm['{sample_file.SPATIAL}'] (true coordinates)")
    meta = sample_file.plain(sample_file.sample_info(adata))
    stem = path.name[: -len(".h5ad")] if path.name.endswith(".h5ad") else path.stem
    parts = stem.split(".")
    mode = str(meta.get("mode") or (parts[1] if len(parts) > 1 else "unknown"))
    slice_id = str(meta.get("slice_id") or (slice_ids_by_key or {}).get(parts[0], parts[0]))
    if sample_file.SLICE_ID in adata.obs and not meta.get("slice_id"):
        slice_id = str(adata.obs[sample_file.SLICE_ID].iloc[0])
    generated = meta.get("generated")
    if generated is None:
        generated = GENERATED_BY_MODE.get(mode, [])
    generated = [str(g) for g in np.atleast_1d(generated)]
    true_pos = np.asarray(adata.obsm[sample_file.SPATIAL], dtype=np.float64)
    pred_pos = np.asarray(adata.obsm[sample_file.SPATIAL_PRED], dtype=np.float64) if sample_file.SPATIAL_PRED in adata.obsm else None
    cell_types = None
    if sample_file.CELL_TYPE in adata.obs:
        labels = cell_type_labels(adata.obs[sample_file.CELL_TYPE])
        if any(label is not None for label in labels):
            cell_types = np.array([UNKNOWN_LABEL if label is None else label for label in labels], dtype=str)
    return Sample(
        path=path,
        slice_id=slice_id,
        mode=mode,
        method=str(meta.get("method", MAIN_METHOD)),
        seed=meta.get("seed"),
        generated=generated,
        meta=meta,
        true_pos=true_pos,
        pred_pos=pred_pos,
        cell_types=cell_types,
        adata=adata,
    )


def peer_samples(status_paths: list[str | Path], slice_ids_by_key: dict[str, str] | None = None) -> list[Sample]:
    """The sample files of the peers that ran (status "ok"), from their status records
    (``alphastomics peer --status``); a failed or skipped run has none and is left out."""
    samples = []
    for status_path in filter(None, status_paths):  # an empty list may reach the command line as ''
        status_path = Path(status_path)
        try:
            status = json.loads(status_path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"{status_path}: not a readable peer status record ({err})") from err
        if status.get("status") != "ok":
            continue
        recorded = Path(str(status.get("sample", "")))
        beside = status_path.with_name(status_path.name.removesuffix(".status.json") + ".h5ad")
        path = recorded if recorded.is_file() else beside
        if path.is_file():
            samples.append(load_sample(path, slice_ids_by_key))
        else:
            log.warning("%s says the run succeeded, but its sample file is missing (%s)", status_path, beside)
    return samples


def _seed_key(s: Sample):
    try:
        return (0, float(s.seed))
    except (TypeError, ValueError):
        return (1, str(s.seed))


def sample_groups(samples: list[Sample]) -> dict[tuple[str, str, str], list[Sample]]:
    """Samples by (slice, mode, method), in report order; several seeds of one group sorted by seed."""
    groups: dict[tuple[str, str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.slice_id, s.mode, s.method)].append(s)
    mode_rank = {m: i for i, m in enumerate(MODES)}
    ordered = sorted(groups, key=lambda k: (k[0], mode_rank.get(k[1], 99), k[2] != MAIN_METHOD, k[2]))
    return {k: sorted(groups[k], key=_seed_key) for k in ordered}


def find_training_log(path: str | Path | None) -> Path | None:
    """The CSV log: ``path`` itself, else the newest ``metrics.csv`` under it (a folder) or under the
    folder that should hold it (Lightning may add ``version_N/`` levels)."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    folder = p if p.is_dir() else p.parent
    if folder.is_dir():
        found = sorted(folder.rglob(p.name if p.suffix == ".csv" else "metrics.csv"), key=lambda q: q.stat().st_mtime)
        return found[-1] if found else None
    return None


def training_summary(log_path: Path) -> list[dict]:
    """Scalar entries of the ``training.json`` that ``alphastomics train`` writes beside its logs."""
    for folder in (log_path.parent, log_path.parent.parent, log_path.parent.parent.parent):
        candidate = folder / "training.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return []
            rows = []
            for key, value in data.items():
                if isinstance(value, (list, tuple)):
                    value = ", ".join(map(str, value)) if len(value) <= 20 else f"{len(value)} entries"
                elif isinstance(value, dict):
                    continue
                rows.append({"key": key, "value": "" if value is None else str(value)})
            return rows
    return []
