"""manifest.json: loading, and the ``manifest`` command that merges per-file manifests.

The workflow runs one preprocess job per input file, each writing
``results/<ds>/shards/<platform>/<file>.manifest.json``; ``alphastomics manifest`` merges them into
``results/<ds>/manifest.json``. Shard paths in a manifest are relative to the directory holding
it, so merging re-expresses them relative to the merged manifest's directory. Schema:
docs/FORMATS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from alphastomics import __version__
from alphastomics.errors import InputError
from alphastomics.io.files import atomic_write_text
from alphastomics.io.names import file_keys_to_slice_ids, slice_file_key

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_REQUIRED_KEYS = ("format_version", "genes", "platforms", "slices")


def manifest_path(dataset_dir: str | Path) -> Path:
    """``dataset_dir/manifest.json``, or ``dataset_dir`` itself when it names a .json file."""
    dataset_dir = Path(dataset_dir)
    return dataset_dir if dataset_dir.suffix == ".json" else dataset_dir / MANIFEST_NAME


def load_manifest(dataset_dir: str | Path) -> dict:
    """The manifest of a dataset directory (or a manifest file), checked for the required keys."""
    path = manifest_path(dataset_dir)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found (run `alphastomics preprocess` / `alphastomics manifest` first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: manifest must be a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise InputError(f"{path}: manifest lacks key(s) {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: manifest format_version {manifest['format_version']} (this package reads {FORMAT_VERSION})")
    for slice_id, entry in manifest["slices"].items():
        if entry.get("platform") not in manifest["platforms"]:
            raise InputError(f"{path}: slice {slice_id!r} names platform {entry.get('platform')!r} absent from 'platforms'")
    return manifest


def write_manifest(path: str | Path, manifest: dict) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


# -- merging ----------------------------------------------------------------------------------
def _rebase_shards(slice_entry: dict, from_dir: Path, to_dir: Path, origin: Path) -> dict:
    entry = dict(slice_entry)
    shards = []
    for shard in slice_entry["shards"]:
        absolute = from_dir / shard["path"]
        if not absolute.is_file():
            raise InputError(f"{origin}: shard {absolute} of slice {slice_entry.get('platform')}/{entry.get('source')} does not exist")
        shards.append({**shard, "path": Path(os.path.relpath(absolute, to_dir)).as_posix()})
    entry["shards"] = shards
    return entry


def _merge_platform(merged: dict, name: str, platform: dict, origin: Path) -> None:
    if name not in merged:
        merged[name] = {**platform, "sources": list(platform.get("sources", []))}
        return
    target = merged[name]
    if target.get("position_key") != platform.get("position_key"):
        raise InputError(
            f"{origin}: platform {name!r} reads positions from obsm[{platform.get('position_key')!r}], "
            f"other files of it from obsm[{target.get('position_key')!r}]"
        )
    # a gene counts as measured on the platform only if every file of it measured the gene, so
    # the platform mask never marks a gene as measured where some of its cells hold filler zeros
    kept = set(platform["measured_genes"])
    target["measured_genes"] = [g for g in target["measured_genes"] if g in kept]
    if target["normalization"].get("applied") != platform["normalization"].get("applied"):
        log.warning("platform %s: files were normalised differently (%s vs %s, see sources)",
                    name, target["normalization"].get("applied"), platform["normalization"].get("applied"))
        target["normalization"] = {**target["normalization"], "applied": "mixed"}
    target["sources"].extend(platform.get("sources", []))


def merge_manifests(inputs: list[Path], out: Path, dataset: str | None = None) -> dict:
    """One manifest from several; refuses differing gene lists and slices claimed twice."""
    if not inputs:
        raise InputError("manifest: no input manifests given")
    out_dir = out.parent
    merged: dict = {"format_version": FORMAT_VERSION, "package_version": __version__, "dataset": dataset,
                    "genes": None, "platforms": {}, "slices": {}}
    slice_origin: dict[str, Path] = {}
    for path in inputs:
        part = load_manifest(path)
        if merged["genes"] is None:
            merged["genes"], genes_origin = list(part["genes"]), path
        elif list(part["genes"]) != merged["genes"]:
            raise InputError(f"{path}: its gene list differs from that of {genes_origin}; preprocess all files with one gene list")
        if dataset is None and part.get("dataset"):
            if merged["dataset"] not in (None, part["dataset"]):
                raise InputError(f"{path}: dataset {part['dataset']!r} differs from {merged['dataset']!r} of other inputs (pass --dataset)")
            merged["dataset"] = part["dataset"]
        for name, platform in part["platforms"].items():
            _merge_platform(merged["platforms"], name, platform, path)
        for slice_id, entry in part["slices"].items():
            if slice_id in merged["slices"]:
                raise InputError(
                    f"slice id {slice_id!r} is claimed by two files: {merged['slices'][slice_id].get('source')} "
                    f"(via {slice_origin[slice_id]}) and {entry.get('source')} (via {path})"
                )
            merged["slices"][slice_id] = {**_rebase_shards(entry, path.parent, out_dir, path), "file_key": slice_file_key(slice_id)}
            slice_origin[slice_id] = path
    file_keys_to_slice_ids(merged["slices"])  # result files are named by file key: refuse a collision
    return merged


def slice_ids_by_file_key(manifest: dict) -> dict[str, str]:
    """``{file key: slice id}`` of every slice of a manifest (see ``alphastomics.io.names``)."""
    return file_keys_to_slice_ids(manifest["slices"])


def _gene_selection(path: Path, genes: list[str]) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: gene selection record cannot be read ({err})") from None
    if record.get("chosen_genes") != len(genes):
        raise InputError(f"{path}: records {record.get('chosen_genes')} chosen genes, the shards hold {len(genes)}: "
                         "preprocess again with the gene list this record belongs to")
    return record


# -- command ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="MANIFEST", help="per-file manifests written by preprocess")
    parser.add_argument("--out", type=Path, required=True, help="merged manifest to write, e.g. results/<dataset>/manifest.json")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the one the inputs record)")
    parser.add_argument("--gene-selection", type=Path, default=None,
                        help="how the gene list was made (the record `gene-list --record` wrote): kept as gene_selection")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    merged = merge_manifests([Path(p) for p in args.inputs], out, args.dataset)
    if args.gene_selection is not None:
        merged["gene_selection"] = _gene_selection(Path(args.gene_selection), merged["genes"])
    write_manifest(out, merged)
    log.info("wrote %s: %d platform(s), %d slice(s), %d genes", out, len(merged["platforms"]), len(merged["slices"]), len(merged["genes"]))
    return 0
