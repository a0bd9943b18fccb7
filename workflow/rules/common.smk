# Helpers shared by the rules: config validation, input functions, wildcard constraints and
# fingerprints of the package code each stage runs.
#
# Every config value reaches a shell command through the `:q` format flag (shlex.quote, each list
# element on its own), so paths with spaces and values with shell characters stay one argument.
# Result files of a slice are named by its file key (alphastomics.io.names), never by the raw id;
# rules look the user's id up from the key and pass that id to the command.
#
# Each default is written once: those of the datasets and methods in the schema (validate() fills
# them into `config`), those of the package's sections in alphastomics.config, which the rules
# read through SETTINGS.
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake.utils import validate

from alphastomics import DOMAINS_MODE, EVALUATION_MODES
from alphastomics.config import config_from_dict
from alphastomics.errors import InputError
from alphastomics.io.names import file_keys_to_slice_ids
from alphastomics.preprocess_inputs import parse_highly_variable
from alphastomics.stages import StageFiles

validate(config, schema="../schemas/config.schema.yaml")

REPO = Path(workflow.basedir).parent
PACKAGE = REPO / "alphastomics"
DATASETS = list(config["datasets"])
ENV = "../../envs/alphastomics.yaml"


def slabs_option(platform_spec):
    """(axis, count) of a platform's `slabs:` setting, or None."""
    slabs = platform_spec.get("slabs")
    return (slabs["axis"], slabs["count"]) if slabs else None


def _check_config_values():
    """Typed checks beyond the schema (same code as `alphastomics train`), and input files that
    must exist, each error naming the key or file. -> the package's settings (alphastomics.config.Config)."""
    from alphastomics.errors import ConfigError

    try:
        settings = config_from_dict(config)
    except ConfigError as err:
        raise WorkflowError(f"config: {err}")
    for dataset, spec in config["datasets"].items():
        for platform, p in spec["platforms"].items():
            unknown = set(p.get("z_values", {})) - set(p["files"])
            if unknown:
                raise WorkflowError(
                    f"config: datasets.{dataset}.platforms.{platform}.z_values: not among its files: {sorted(unknown)}"
                )
            for path in p["files"]:
                if not (REPO / path).is_file():
                    raise WorkflowError(
                        f"config: datasets.{dataset}.platforms.{platform}.files: input file not found: {path}"
                    )
        gene_list = spec["gene_list"]
        try:
            highly_variable = parse_highly_variable(gene_list)
        except InputError as err:
            raise WorkflowError(f"config: datasets.{dataset}.gene_list: {err}")
        if gene_list not in ("intersection", "union") and highly_variable is None and not (REPO / gene_list).is_file():
            raise WorkflowError(f"config: datasets.{dataset}.gene_list: file not found: {gene_list}")
        overlap = set(spec["test_slices"]) & set(spec["validation_slices"])
        if overlap:
            raise WorkflowError(f"config: datasets.{dataset}: slices both test and validation: {sorted(overlap)}")
        _check_named_slices_exist(dataset, spec)
    return settings


def _check_named_slices_exist(dataset, spec):
    """Test and validation slices must be in some input file; read obs[slice_key] of each file (or
    take its stem, as preprocessing does) so a typo stops the run before any job, naming the slice
    and listing those that exist."""
    from alphastomics.errors import AlphaSTomicsError
    from alphastomics.preprocess import slice_ids_in_file

    source_of = {}
    for platform, p in spec["platforms"].items():
        for path in p["files"]:
            try:
                ids = slice_ids_in_file(REPO / path, p.get("slice_key"), slabs_option(p))
            except AlphaSTomicsError as err:
                raise WorkflowError(f"config: datasets.{dataset}.platforms.{platform}.files: {err}")
            for slice_id in ids:
                if slice_id in source_of:
                    raise WorkflowError(
                        f"config: datasets.{dataset}: slice id {slice_id!r} is claimed by two files: {source_of[slice_id]} and {path}"
                    )
                source_of[slice_id] = path
    missing = [
        f"datasets.{dataset}.{key}: {', '.join(map(repr, absent))}"
        for key in ("test_slices", "validation_slices")
        if (absent := [s for s in spec[key] if s not in source_of])
    ]
    if missing:
        raise WorkflowError(
            f"config: slice(s) in no input file: {'; '.join(missing)}. "
            f"Slices in the files of {dataset}: {', '.join(map(repr, sorted(source_of)))}"
        )
    try:
        file_keys_to_slice_ids(source_of)
    except AlphaSTomicsError as err:
        raise WorkflowError(f"config: datasets.{dataset}: {err}")


SETTINGS = _check_config_values()
MODES = SETTINGS.sampling.modes


wildcard_constraints:
    dataset="|".join(DATASETS),
    platform="[A-Za-z0-9_-]+",
    file_id="[^/]+",
    slice="[A-Za-z0-9][A-Za-z0-9._-]*",  # a file key, see alphastomics.io.names
    mode="|".join(EVALUATION_MODES),
    method="[a-z_]+",
    stage="train|evaluate",


def file_id(path):
    return Path(path).name.removesuffix(".h5ad")


def platform_files(dataset, platform):
    return {file_id(f): f for f in config["datasets"][dataset]["platforms"][platform]["files"]}


def all_files(dataset):
    return [f for p in config["datasets"][dataset]["platforms"].values() for f in p["files"]]


def gene_list_file(dataset):
    mode = config["datasets"][dataset]["gene_list"]
    return [] if mode in ("intersection", "union") or parse_highly_variable(mode) else [mode]


def gene_selection_held_out(dataset):
    """--held-out-slices of a highly_variable gene list: the slices the choice must not see."""
    if not parse_highly_variable(config["datasets"][dataset]["gene_list"]):
        return []
    return ["--held-out-slices", *test_slices(dataset), *validation_slices(dataset)]


def gene_selection_file_options(dataset):
    """--file-options of a highly_variable gene list: each file's preprocess options, as JSON."""
    if not parse_highly_variable(config["datasets"][dataset]["gene_list"]):
        return []
    options = {
        path: preprocess_options(SimpleNamespace(dataset=dataset, platform=platform, file_id=fid))
        for platform in config["datasets"][dataset]["platforms"]
        for fid, path in platform_files(dataset, platform).items()
    }
    return ["--file-options", json.dumps(options)]


def gene_list_panels(dataset):
    return [] if gene_list_file(dataset) else all_files(dataset)


def per_file_manifests(wildcards):
    return [
        f"results/{wildcards.dataset}/shards/{platform}/{fid}.manifest.json"
        for platform in config["datasets"][wildcards.dataset]["platforms"]
        for fid in platform_files(wildcards.dataset, platform)
    ]


def preprocess_options(wildcards):
    """Options of one file's preprocessing as a list of arguments (quoted one by one in the rule)."""
    p = config["datasets"][wildcards.dataset]["platforms"][wildcards.platform]
    flags = {
        "--position-key": p["position_key"],
        "--slice-key": p.get("slice_key"),
        "--cell-type-key": p.get("cell_type_key"),
        "--layer": p.get("layer"),
        "--normalization": p["normalization"],
        "--z-key": p.get("z_key"),
        "--z-value": p.get("z_values", {}).get(platform_files(wildcards.dataset, wildcards.platform)[wildcards.file_id], p.get("z_value")),
        "--on-invalid": p.get("on_invalid"),
        "--max-cells-per-shard": p.get("max_cells_per_shard"),
        "--slabs": f"{p['slabs']['axis']}:{p['slabs']['count']}" if p.get("slabs") else None,
        "--slice-covariates": ",".join(p["slice_covariates"]) if p.get("slice_covariates") else None,
    }
    return [str(item) for flag, value in flags.items() if value is not None for item in (flag, value)]


def test_slices(dataset):
    return config["datasets"][dataset]["test_slices"]


def validation_slices(dataset):
    return config["datasets"][dataset]["validation_slices"]


def section_axis_option(dataset):
    """train's --section-axis for a dataset whose sections carry their place (none otherwise)."""
    axis = config["datasets"][dataset].get("section_axis")
    return ["--section-axis", axis] if axis else []


def test_slice_keys(dataset):
    """{file key: slice id} of the dataset's test slices: the keys name their result files."""
    return file_keys_to_slice_ids(test_slices(dataset))


def slice_id(wildcards):
    """The user's slice id behind the `slice` wildcard (a file key)."""
    return test_slice_keys(wildcards.dataset)[wildcards.slice]


def sample_files(dataset):
    return expand("results/{dataset}/samples/{slice}.{mode}.h5ad", dataset=dataset, slice=list(test_slice_keys(dataset)), mode=MODES)


def metric_files(dataset):
    return expand("results/{dataset}/metrics/{slice}.{mode}.tsv", dataset=dataset, slice=list(test_slice_keys(dataset)), mode=MODES)


# Peer methods (config `methods:`, alphastomics.peers): each runs on every held-out slice in its
# mode. Peers of a sampling mode run when AlphaSTomics samples that mode; `domains` (embeddings
# scored against cell types) on datasets with a cell_type_key.
METHODS = config.get("methods", {})


def has_cell_types(dataset):
    return any(p.get("cell_type_key") for p in config["datasets"][dataset]["platforms"].values())


def peer_runs(dataset):
    """(method, mode) of every peer run of a dataset."""
    runs = []
    for mode in EVALUATION_MODES:  # `methods:` lists methods by mode; joint has none
        if mode == DOMAINS_MODE and not has_cell_types(dataset):
            continue
        if mode != DOMAINS_MODE and mode not in MODES:
            continue
        runs += [(method, mode) for method in METHODS.get(mode, [])]
    return runs


def peer_files(dataset, suffix):
    return [
        f"results/{dataset}/peers/{method}/{key}.{mode}.{suffix}"
        for method, mode in peer_runs(dataset)
        for key in test_slice_keys(dataset)
    ]


def benchmark_files(dataset):
    """The Snakemake benchmark files of a dataset's method runs (AlphaSTomics' training and sampling, every peer run)."""
    own = [f"results/{dataset}/benchmarks/alphastomics/train.tsv"]
    own += expand("results/{dataset}/benchmarks/alphastomics/{slice}.{mode}.tsv", dataset=dataset,
                  slice=list(test_slice_keys(dataset)), mode=MODES)
    peers = [f"results/{dataset}/benchmarks/{method}/{key}.{mode}.tsv"
             for method, mode in peer_runs(dataset) for key in test_slice_keys(dataset)]
    return own + peers


def time_limit(method):
    return METHODS.get("time_limits", {}).get(method, METHODS["time_limit_s"])


def method_options(method):
    options = METHODS.get("options", {}).get(method)
    return ["--options", json.dumps(options, sort_keys=True)] if options else []


def sampling_draws(mode):
    """Draws per slice of a mode, as `alphastomics sample` counts them (SamplingConfig.draws)."""
    return SETTINGS.sampling.draws(mode)


def training_excluded(dataset):
    """Slices no method may train on: every test and validation slice."""
    return [*test_slices(dataset), *validation_slices(dataset)]


# Settings each stage reads from config; a change elsewhere in config does not re-run the stage.
STAGE_SECTIONS = {
    "train": ["model", "diffusion", "loss", "masking", "training"],
    "evaluate": ["evaluation"],
}


def stage_settings(stage):
    return json.dumps({s: config.get(s, {}) for s in STAGE_SECTIONS[stage]}, sort_keys=True)


# Snakemake does not see edits to an imported package: each rule carries, as a parameter, a
# hash of the package files its command runs, so editing that code re-runs the rule and what
# follows. The files are the import closure of the command's module (alphastomics.stages), read
# from the code, so a new import is followed without a list to keep.
STAGE_FILES = StageFiles(PACKAGE)


def code_fingerprint(stage):
    """Fingerprint of the `alphastomics <stage>` command; rules that run another command of the
    same module (gene-list, gather, report --summary) name the stage of that module."""
    return STAGE_FILES.fingerprint(stage)
