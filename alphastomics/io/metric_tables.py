"""Metric tables (``metrics/<slice>.<mode>.tsv`` and the JSON beside it, docs/FORMATS.md): writing and reading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from alphastomics.errors import InputError
from alphastomics.io.files import atomic_write_text

TABLE_COLUMNS = ["dataset", "slice", "mode", "method", "metric", "value"]


def nan_to_none(value):
    """JSON has no NaN: write null for non-finite numbers, recursively."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def details_path(table_path: str | Path) -> Path:
    """``metrics/<slice>.<mode>.tsv`` -> ``metrics/<slice>.<mode>.json``."""
    return Path(table_path).with_suffix(".json")


def write_table(table: pd.DataFrame, out: str | Path) -> None:
    """A tidy table as TSV, written whole or not at all."""
    atomic_write_text(out, table.to_csv(sep="\t", index=False, na_rep="NaN", float_format="%.10g"))


def write_metrics(table: pd.DataFrame, details: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the TSV and, beside it, the JSON of how each metric was computed."""
    out = Path(out)
    json_path = details_path(out)
    atomic_write_text(json_path, json.dumps(nan_to_none(details), indent=1) + "\n")
    write_table(table, out)
    return out, json_path


def read_metric_table(path: str | Path) -> pd.DataFrame:
    """One tidy metric table, with an InputError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metric table not found")
    try:
        table = pd.read_csv(path, sep="\t", dtype={c: str for c in TABLE_COLUMNS[:-1]})
    except Exception as err:  # noqa: BLE001 - pandas raises several types for a bad file
        raise InputError(f"{path}: not a readable TSV ({type(err).__name__}: {err})") from None
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    return table[TABLE_COLUMNS]
