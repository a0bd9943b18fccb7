"""The input side of ``alphastomics preprocess``: the gene list, and each h5ad file read and checked
(genes, coordinates, slices and slabs, cell types, slice covariates, the normalisation its values
call for) into a :class:`FilePlan` before anything is written. ``alphastomics.preprocess`` then
streams the planned files' expression into shards.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from alphastomics.errors import InputError
from alphastomics.io.h5ad import H5adFile, Matrix, read_var_names
from alphastomics.io.shards import DEFAULT_MAX_CELLS_PER_SHARD

log = logging.getLogger(__name__)

GENE_LIST_MODES = ("intersection", "union")
HIGHLY_VARIABLE = "highly_variable"  # highly_variable:N, chosen by alphastomics.gene_selection
_HIGHLY_VARIABLE_PATTERN = re.compile(rf"^{HIGHLY_VARIABLE}:(\d+)$")
APPLIED_LIBRARY_SIZE = "library_size_log1p"
# Rows read at a time. Small chunks let glibc serve their arrays from reused heap memory instead of
# fresh mmaps, whose page faults dominate system time with large chunks.
DEFAULT_CHUNK_SIZE = 10_000


# ============================================================================================
# gene lists
# ============================================================================================
def read_gene_list_file(path: str | Path) -> list[str]:
    """Symbols of a gene-list file: one a line; blanks and '#' comments skipped, duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: gene list file not found (give a file, or 'intersection' / 'union')")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: gene list file cannot be read as text ({err})") from None
    genes, seen = [], set()
    for line in lines:
        symbol = line.split("#", 1)[0].strip()
        if not symbol:
            continue
        if symbol in seen:
            log.warning("%s: gene %s listed more than once; kept once", path, symbol)
            continue
        seen.add(symbol)
        genes.append(symbol)
    if not genes:
        raise InputError(f"{path}: gene list file is empty")
    return genes


def derive_gene_list(files: list[Path], mode: str) -> list[str]:
    """Intersection or union of the panels of ``files``, case-insensitively.

    Order is that of first appearance (file order, then var order) and the first spelling seen is
    kept, so the list is deterministic for a given file order.
    """
    if not files:
        raise InputError(f"gene list '{mode}' needs at least one h5ad file")
    spelling: dict[str, str] = {}
    order: list[str] = []
    common: set[str] | None = None
    for path in files:
        panel = unique_var_names(path)
        keys = [g.lower() for g in panel]
        for key, gene in zip(keys, panel):
            if key not in spelling:
                spelling[key] = gene
                order.append(key)
        common = set(keys) if common is None else common & set(keys)
    chosen = order if mode == "union" else [k for k in order if k in common]
    if not chosen:
        raise InputError(f"the panels of {', '.join(map(str, files))} have no gene in common (gene list 'intersection')")
    return [spelling[k] for k in chosen]


def parse_highly_variable(spec: str | None) -> int | None:
    """N of a ``highly_variable:N`` gene-list spec; None for any other spec."""
    if spec is None or not str(spec).startswith(HIGHLY_VARIABLE):
        return None
    match = _HIGHLY_VARIABLE_PATTERN.match(str(spec))
    if match is None or int(match.group(1)) < 1:
        raise InputError(f"gene list {spec!r}: write highly_variable:N with N a positive number of genes, e.g. highly_variable:2000")
    return int(match.group(1))


def resolve_gene_list(spec: str | None, files: list[Path]) -> list[str]:
    """The fixed gene list: from a file, or derived from ``files`` (default: intersection)."""
    if parse_highly_variable(spec) is not None:
        raise InputError(f"gene list {spec!r} is chosen on the training slices: write it first with "
                         f"`alphastomics gene-list FILES --mode {spec} --held-out-slices ... --out genes.txt`, then give that file")
    if spec is None or spec in GENE_LIST_MODES:
        return derive_gene_list(files, spec or "intersection")
    return read_gene_list_file(spec)


def unique_var_names(path: Path) -> list[str]:
    names = [str(n) for n in read_var_names(path)]
    _check_unique_genes(names, path)
    return names


def _check_unique_genes(names, path: Path) -> None:
    counts = pd.Series(names).value_counts()
    duplicated = counts[counts > 1]
    if len(duplicated):
        shown = ", ".join(f"{g} (x{n})" for g, n in duplicated.head(10).items())
        raise InputError(f"{path}: duplicated gene names in var: {shown}{' ...' if len(duplicated) > 10 else ''}; "
                         "genes are matched by name, so make them unique, e.g. adata.var_names_make_unique()")


@dataclass
class GeneMatch:
    """Where each gene of the list is found in one file's panel."""

    source_columns: np.ndarray  # columns of the file's matrix, in gene-list order of the matched genes
    target_positions: np.ndarray  # positions in the gene list of those genes
    unmatched: list[str]  # genes of the list the file does not have (the ambiguous ones included)
    case_insensitive: list[tuple[str, str]]  # (list symbol, file symbol) matched ignoring case
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)  # (list symbol, file symbols equal ignoring case)

    @property
    def absent(self) -> list[str]:
        """Unmatched genes the file does not have in any spelling."""
        ambiguous = {gene for gene, _ in self.ambiguous}
        return [g for g in self.unmatched if g not in ambiguous]


def match_genes(genes: list[str], var_names, path: Path) -> GeneMatch:
    """Exact match first, then case-insensitive among the still unused var names."""
    exact = {name: i for i, name in enumerate(var_names)}
    used: set[int] = set()
    found: dict[int, int] = {}
    for pos, gene in enumerate(genes):
        if gene in exact:
            found[pos] = exact[gene]
            used.add(exact[gene])
    by_lower: dict[str, list[int]] = {}
    for i, name in enumerate(var_names):
        if i not in used:
            by_lower.setdefault(name.lower(), []).append(i)
    case_insensitive, ambiguous = [], []
    for pos, gene in enumerate(genes):
        candidates = by_lower.get(gene.lower(), []) if pos not in found else []
        if len(candidates) == 1:
            found[pos] = candidates[0]
            case_insensitive.append((gene, var_names[candidates[0]]))
            by_lower[gene.lower()] = []
        elif len(candidates) > 1:  # ambiguous spellings stay unmatched rather than guessed
            ambiguous.append((gene, [var_names[c] for c in candidates]))
    if not found:
        raise InputError(f"{path}: no gene of the gene list ({len(genes)} genes, e.g. {', '.join(genes[:5])}) is in this file's panel")
    positions = np.array(sorted(found), dtype=np.int64)
    return GeneMatch(
        source_columns=np.array([found[p] for p in positions], dtype=np.int64),
        target_positions=positions,
        unmatched=[g for p, g in enumerate(genes) if p not in found],
        case_insensitive=case_insensitive,
        ambiguous=ambiguous,
    )


def report_gene_match(match: GeneMatch, n_genes: int, path: Path) -> None:
    """Log the genes of the list a file lacks, and those it holds in several spellings, each once."""
    if match.absent:
        log.warning("%s: %d of %d genes of the list are not in its panel (zeros, masked as unmeasured): %s",
                    path, len(match.absent), n_genes, ", ".join(match.absent))
    for gene, spellings in match.ambiguous:
        log.warning("%s: gene %s of the list matches %d genes of the file ignoring case (%s): ambiguous, so left "
                    "unmeasured; put the wanted spelling in the gene list", path, gene, len(spellings), ", ".join(spellings))
    for wanted, found in match.case_insensitive:
        log.info("%s: gene %s matched %s ignoring case", path, wanted, found)


# ============================================================================================
# validation of one file (nothing written)
# ============================================================================================
@dataclass
class Options:
    platform: str
    out_dir: Path
    manifest_path: Path
    dataset: str
    gene_list: str | None = None
    position_key: str = "spatial"
    slice_key: str | None = None
    cell_type_key: str | None = None
    layer: str | None = None
    z_key: str | None = None
    z_value: float = 0.0
    normalization: str = "auto"
    on_invalid: str = "drop"
    max_cells_per_shard: int = DEFAULT_MAX_CELLS_PER_SHARD
    chunk_size: int = DEFAULT_CHUNK_SIZE
    slabs: tuple[str, int] | None = None  # (axis, count): cut each slice into slabs of equal cell count
    slice_covariates: tuple[str, ...] = ()  # obs keys constant within a slice (condition, region, time point)


@dataclass
class FilePlan:
    """Everything about one input file except its expression values, checked and ready."""

    path: Path
    n_obs: int
    gene_match: GeneMatch
    coords: np.ndarray  # (n_obs, 3) float32
    n_dims: int
    keep: np.ndarray  # (n_obs,) bool, False where coordinates are not finite
    slice_codes: np.ndarray  # (n_obs,) int32 into slice_ids
    slice_ids: list[str]
    cell_type_codes: np.ndarray  # (n_obs,) int32 into categories, -1 unknown
    categories: list[str]
    covariates: dict[str, dict[str, str]]  # slice id -> {obs key: value}
    normalization_applied: str
    matrix_encoding: str
    n_file_genes: int

    @property
    def n_dropped(self) -> int:
        return int((~self.keep).sum())


def plan_file(path: Path, genes: list[str], opts: Options) -> FilePlan:
    with H5adFile(path) as h5ad:
        if h5ad.n_obs == 0:
            raise InputError(f"{path}: the file holds no cells (obs is empty)")
        var_names = [str(n) for n in h5ad.var_names]
        _check_unique_genes(var_names, path)
        try:
            gene_match = match_genes(genes, var_names, path)
        except InputError as err:
            raise InputError(f"{err}{_gene_symbols_hint(h5ad, genes)}") from None
        matrix = h5ad.matrix(opts.layer)
        if matrix.shape != (h5ad.n_obs, len(var_names)):
            raise InputError(f"{matrix.label}: shape {matrix.shape} does not match obs x var ({h5ad.n_obs} x {len(var_names)})")
        coords, n_dims = read_coordinates(h5ad, opts)
        keep = np.isfinite(coords).all(axis=1)
        if not keep.all():
            _handle_invalid_positions(h5ad, keep, opts)
        slice_codes, slice_ids = read_slices(h5ad, opts)
        check_cell_ids(h5ad.obs_names(0, h5ad.n_obs), slice_codes, slice_ids, path)
        if opts.slabs is not None:
            slice_codes, slice_ids = cut_into_slabs(coords, keep, slice_codes, slice_ids, *opts.slabs)
        cell_type_codes, categories = read_cell_types(h5ad, opts)
        covariates = read_slice_covariates(h5ad, opts, slice_codes, slice_ids)
        applied = decide_normalization(matrix, opts.normalization)
        plan = FilePlan(
            path=path, n_obs=h5ad.n_obs, gene_match=gene_match, coords=coords, n_dims=n_dims, keep=keep,
            slice_codes=slice_codes, slice_ids=slice_ids, cell_type_codes=cell_type_codes, categories=categories,
            covariates=covariates,
            normalization_applied=applied, matrix_encoding=matrix.encoding, n_file_genes=len(var_names),
        )
    _check_no_empty_slice(plan)
    _check_slices_spread(plan, opts.position_key)
    return plan


def check_cell_ids(ids, slice_codes: np.ndarray, slice_ids: list[str], path: Path) -> None:
    """Every cell has an id, unique within its slice: cells are matched by id downstream (peers'
    layouts, a user's data, sample files). The same id in two slices is fine: Visium barcodes repeat
    across sections."""
    ids = pd.Series(np.asarray(ids, dtype=object)).astype(str)
    empty = np.flatnonzero(ids.str.strip().eq("").to_numpy())
    if empty.size:
        rows = ", ".join(map(str, empty[:5])) + (" ..." if empty.size > 5 else "")
        raise InputError(f"{path}: {empty.size} cell(s) with an empty id in obs_names (row(s) {rows}); cells are matched "
                         "by id, so give each one, e.g. adata.obs_names = [f'cell{i}' for i in range(adata.n_obs)]")
    frame = pd.DataFrame({"slice": np.asarray(slice_codes), "id": ids})
    repeated = frame[frame.duplicated(keep=False)].groupby(["slice", "id"], sort=False).size()
    if len(repeated):
        several = len(slice_ids) > 1
        shown = ", ".join(f"{cell!r} (x{n}{f' in slice {slice_ids[code]!r}' if several else ''})"
                          for (code, cell), n in repeated.head(5).items())
        raise InputError(f"{path}: {len(repeated)} cell id(s) used by more than one cell of a slice: {shown}"
                         f"{' ...' if len(repeated) > 5 else ''}; cells are matched by id, so make them unique, "
                         "e.g. adata.obs_names_make_unique()")


def _check_slices_spread(plan: FilePlan, position_key: str) -> None:
    """A slice whose cells all sit at one point has no layout to learn or compare: placeholder coordinates."""
    rows = np.flatnonzero(plan.keep)
    coords = pd.DataFrame(plan.coords[rows, : plan.n_dims]).groupby(plan.slice_codes[rows])
    low, high, size = coords.min(), coords.max(), coords.size()
    for code in low.index[(low == high).all(axis=1) & (size > 1)]:
        point = ", ".join(f"{v:g}" for v in low.loc[code])
        raise InputError(f"{plan.path}: all {size[code]} cells of slice {plan.slice_ids[code]!r} sit at one point ({point}) "
                         f"in obsm[{position_key!r}]: its coordinates are missing or placeholders")


def _gene_symbols_hint(h5ad: H5adFile, genes: list[str]) -> str:
    """Where var_names are ids (Ensembl, as in CELLxGENE files) the symbols often sit in a var column:
    name the column that holds most genes of the list, and how to make it the index."""
    wanted = {g.lower() for g in genes}
    best, best_count = None, 0
    for key in h5ad.var_keys():
        try:
            values = h5ad.var_column(key)
        except Exception:  # noqa: BLE001 - a column anndata cannot decode is no candidate
            continue
        count = len(wanted & {str(v).lower() for v in values})
        if count > best_count:
            best, best_count = key, count
    if best is None:
        return ""
    return (f"; var column {best!r} holds {best_count} of them: make it the gene names, e.g. "
            f"adata.var_names = adata.var[{best!r}].astype(str); adata.var_names_make_unique()")


def read_coordinates(h5ad: H5adFile, opts: Options) -> tuple[np.ndarray, int]:
    """(n_obs, 3) float32 coordinates and the dimensionality of the data (2 or 3)."""
    raw = h5ad.obsm_array(opts.position_key)
    if raw.ndim != 2 or raw.shape[1] not in (2, 3) or raw.shape[0] != h5ad.n_obs:
        raise InputError(
            f"{h5ad.path}: obsm[{opts.position_key!r}] has shape {raw.shape}; expected (n_obs={h5ad.n_obs}, 2) or (n_obs, 3)"
        )
    if raw.dtype.kind not in "fiu":
        raise InputError(f"{h5ad.path}: obsm[{opts.position_key!r}] is not numeric (dtype {raw.dtype})")
    coords = np.zeros((raw.shape[0], 3), dtype=np.float32)
    coords[:, : raw.shape[1]] = raw
    if raw.shape[1] == 3:
        if opts.z_key is not None:
            log.warning("%s: obsm[%r] is 3-D; --z-key %s is ignored", h5ad.path, opts.position_key, opts.z_key)
        return coords, 3
    if opts.z_key is not None:
        z = h5ad.obs_column(opts.z_key, "--z-key")
        try:
            coords[:, 2] = np.asarray(z, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{h5ad.path}: obs[{opts.z_key!r}] (--z-key) is not numeric") from None
    else:
        coords[:, 2] = opts.z_value
    return coords, 2


def _handle_invalid_positions(h5ad: H5adFile, keep: np.ndarray, opts: Options) -> None:
    bad_rows = np.flatnonzero(~keep)
    examples = ", ".join(str(h5ad.obs_names(int(r), int(r) + 1)[0]) for r in bad_rows[:5])
    what = f"{len(bad_rows)} cell(s) with NaN or infinite coordinates in obsm[{opts.position_key!r}] (e.g. {examples})"
    if opts.on_invalid == "error":
        raise InputError(f"{h5ad.path}: {what}; use --on-invalid drop to drop them")
    log.warning("%s: dropping %s", h5ad.path, what)


def _labels_to_codes(values, path: Path, key: str, allow_missing: bool) -> tuple[np.ndarray, list[str]]:
    """Integer codes and string labels of an obs column; -1 for missing values."""
    if isinstance(values, pd.Categorical):
        codes, labels = np.asarray(values.codes, dtype=np.int32), [str(c) for c in values.categories]
    else:
        codes, uniques = pd.factorize(pd.Series(values), sort=False)
        codes, labels = codes.astype(np.int32), [str(u) for u in uniques]
    if not allow_missing and (codes < 0).any():
        raise InputError(f"{path}: obs[{key!r}] has {int((codes < 0).sum())} missing value(s)")
    return codes, labels


def read_slices(h5ad: H5adFile, opts: Options) -> tuple[np.ndarray, list[str]]:
    return _slice_codes(h5ad, opts.slice_key)


def _slice_codes(h5ad: H5adFile, slice_key: str | None) -> tuple[np.ndarray, list[str]]:
    if slice_key is None:  # one slice per file, named after it
        return np.zeros(h5ad.n_obs, dtype=np.int32), [h5ad.path.stem]
    values = h5ad.obs_column(slice_key, "--slice-key")
    return _labels_to_codes(values, h5ad.path, slice_key, allow_missing=False)


AXES = {"x": 0, "y": 1, "z": 2}


def slab_id(slice_id: str, index: int) -> str:
    return f"{slice_id}_slab{index}"


def cut_into_slabs(coords: np.ndarray, keep: np.ndarray, codes: np.ndarray, ids: list[str], axis: str, count: int
                   ) -> tuple[np.ndarray, list[str]]:
    """Cut every slice into ``count`` slabs of equal cell count along ``axis``: serial sections of one
    volume (or strips of one section) that share a coordinate frame. Slab i of slice s is
    ``s_slab<i>``, numbered from the low end of the axis."""
    new_codes = np.full(codes.shape, -1, dtype=np.int32)
    new_ids: list[str] = []
    for code, slice_id in enumerate(ids):
        cells = np.flatnonzero((codes == code) & keep)
        if cells.size == 0:
            continue
        position = coords[cells, AXES[axis]]
        rank = np.empty(cells.size, dtype=np.int64)
        rank[np.argsort(position, kind="stable")] = np.arange(cells.size)
        slab = (rank * count) // cells.size
        for i in range(count):
            new_codes[cells[slab == i]] = len(new_ids)
            new_ids.append(slab_id(slice_id, i))
    new_codes[~keep] = 0 if new_ids else -1  # dropped cells: never written
    return new_codes, new_ids


def parse_slabs(text: str | None) -> tuple[str, int] | None:
    """``"x:4"`` -> ("x", 4)."""
    if not text:
        return None
    axis, _, count = text.partition(":")
    if axis not in AXES or not count.isdigit() or int(count) < 2:
        raise InputError(f"--slabs {text!r}: expected AXIS:COUNT with AXIS one of x, y, z and COUNT >= 2 (e.g. x:4)")
    return axis, int(count)


def slice_ids_in_file(path: str | Path, slice_key: str | None, slabs: tuple[str, int] | None = None) -> list[str]:
    """Sorted slice ids of the cells of one file, exactly as preprocessing will name them.

    Reads only ``obs[slice_key]`` (nothing when ``slice_key`` is None: the file stem), so the
    workflow can check the configured test and validation slices before any job runs. With
    ``slabs`` every slice becomes its slabs.
    """
    with H5adFile(path) as h5ad:
        codes, labels = _slice_codes(h5ad, slice_key)
    ids = [labels[c] for c in np.unique(codes)]
    if slabs is not None:
        ids = [slab_id(s, i) for s in ids for i in range(slabs[1])]
    return sorted(ids)


def read_slice_covariates(h5ad: H5adFile, opts: Options, slice_codes: np.ndarray, slice_ids: list[str]) -> dict[str, dict[str, str]]:
    """Per slice, the value of each ``--slice-covariates`` obs key; it must be one value per slice."""
    covariates: dict[str, dict[str, str]] = {sid: {} for sid in slice_ids}
    for key in opts.slice_covariates:
        codes, labels = _labels_to_codes(h5ad.obs_column(key, "--slice-covariates"), h5ad.path, key, allow_missing=False)
        for code, slice_id in enumerate(slice_ids):
            values = np.unique(codes[slice_codes == code])
            if len(values) > 1:
                shown = ", ".join(labels[v] for v in values[:4])
                raise InputError(f"{h5ad.path}: obs[{key!r}] (--slice-covariates) takes several values within slice "
                                 f"{slice_id!r} ({shown}); a slice covariate has one value per slice")
            if len(values):
                covariates[slice_id][key] = labels[values[0]]
    return covariates


def read_cell_types(h5ad: H5adFile, opts: Options) -> tuple[np.ndarray, list[str]]:
    if opts.cell_type_key is None:
        return np.full(h5ad.n_obs, -1, dtype=np.int32), []
    values = h5ad.obs_column(opts.cell_type_key, "--cell-type-key")
    codes, labels = _labels_to_codes(values, h5ad.path, opts.cell_type_key, allow_missing=True)
    if codes.size and (codes < 0).all():
        raise InputError(f"{h5ad.path}: obs[{opts.cell_type_key!r}] (--cell-type-key) is missing in every one of its "
                         f"{codes.size} cells; name a column that holds cell types, or leave --cell-type-key out")
    return codes, labels


def _check_no_empty_slice(plan: FilePlan) -> None:
    present = np.unique(plan.slice_codes)
    kept = np.bincount(plan.slice_codes[plan.keep], minlength=len(plan.slice_ids))
    empty = [plan.slice_ids[c] for c in present if kept[c] == 0]
    if empty:
        raise InputError(
            f"{plan.path}: slice(s) {', '.join(map(repr, empty))} left with zero cells after dropping cells with invalid coordinates"
        )


def decide_normalization(matrix: Matrix, requested: str) -> str:
    """What will be applied: 'library_size_log1p', 'log1p' or 'none'.

    ``auto`` looks at values sampled across the matrix: integer-valued data are taken as counts.
    The same sample catches negative counts early, before anything is written; the full pass
    checks every value again.
    """
    if requested == "none":
        return "none"
    sample = matrix.sample_values()
    if sample.size and not np.isfinite(sample).all():
        raise InputError(f"{matrix.label}: expression holds NaN or infinite values")
    if requested == "log1p":
        applied = "log1p"
    elif sample.size == 0 or np.array_equal(sample, np.round(sample)):
        applied = APPLIED_LIBRARY_SIZE
    else:
        log.info("%s: values are not integers; expression left as it is (normalisation auto)", matrix.label)
        applied = "none"
    if applied != "none" and sample.size and sample.min() < 0:
        raise InputError(_negative_counts_message(matrix.label, float(sample.min()), "sampled rows"))
    return applied


def _negative_counts_message(label: str, minimum: float, where: str) -> str:
    return (f"{label}: negative expression values (min {minimum:g}, {where}) where counts are expected; "
            "use --normalization none for data that are already normalised")


def check_values(values: np.ndarray, label: str, start: int, counts_expected: bool) -> None:
    """Expression values of a chunk of rows: finite, and not negative where counts are expected."""
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        raise InputError(f"{label}: expression holds NaN or infinite values (rows {start}+)")
    if counts_expected and values.min() < 0:
        raise InputError(_negative_counts_message(label, float(values.min()), f"rows {start}+"))
