"""Conditional generation, inverse design and denoising (issue 13), measured on the pipeline's models.

    python benchmarks/conditions.py      # after the pipeline: results/starmap_mpfc, results/bdtnp_drosophila

1. STARmap BZ14, ``pos_to_expr --condition cell_type`` (the slice's own labels), through the CLI as a
   user runs it: share of generated cells that a 15-NN classifier on real training cells assigns to
   their conditioned type, beside the same seeds drawn unconditionally.
2. The same with ``--target Pcp4:high --target-scale W``: the rise of mean generated Pcp4 over the
   unguided draw of the same seed, in standard deviations of Pcp4 in the data, and the energy
   distance of the other genes to real cells, guided / unguided.
3. ``denoise`` on the held-out slice of every dataset with a model under ``--results`` (the demo's
   two, and those of config/benchmarks/ that were run), with half of its non-zero values set to 0:
   median per-gene Pearson with the undropped values of the denoised expression and of the dropped
   input, beside a ridge regression fitted for this very task on the training slices (same
   dropout); the estimated dropout rate (true 0.5); and the undropped slice denoised, which should
   come back as it was (Pearson 1).
4. ``--joint-guidance``: STARmap BZ14 ``joint`` with cell types drawn from the training
   composition, with the default guidance (3 at the middle noise levels) and with none, seeds 0-2:
   composition L1, neighbourhood enrichment, Moran's I and energy distance, beside the real slices.
5. ``--perturbation``: no bundled dataset has two conditions, so one is planted in real tissue: the
   three STARmap sections (condition=control) and a copy of BZ9 whose activity genes are raised 4x
   and six other genes thinned to 25% (condition=treated). A model with the pipeline's settings
   (config/config.yaml, ``--max-steps``) is trained on BZ5, BZ9 and the treated copy; BZ14 is drawn
   under condition=treated and scored by ``evaluate``: Pearson of predicted and observed per-gene
   shifts, sign agreement, slope, and the predicted shift of the planted genes.

The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr
from sklearn.linear_model import Ridge
from sklearn.neighbors import NearestNeighbors

from alphastomics.checkpoint import load_model
from alphastomics.denoise import DEFAULT_DRAWS, DEFAULT_TIME, denoise_slice
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import SliceData, load_slice


def _cli(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "alphastomics.cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])


def conditional_and_target(checkpoint: Path, data: Path, slice_id: str, target_scale: float, out: Path,
                           sampling: tuple[str, ...] = ()) -> dict:
    figures = {}
    conditional = out / "conditional.h5ad"
    started = time.perf_counter()
    _cli("sample", "--checkpoint", checkpoint, "--data", data, "--slice", slice_id, "--mode", "pos_to_expr",
         "--condition", "cell_type", "--out", conditional, *sampling)
    figures["conditional_seconds"] = round(time.perf_counter() - started, 1)
    _cli("evaluate", conditional, "--reference", data, "--out", out / "conditional.tsv")
    metrics = pd.read_csv(out / "conditional.tsv", sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    figures["condition_type_accuracy"] = round(float(metrics["condition_type_accuracy"]), 3)
    figures["condition_type_accuracy_unconditional"] = round(float(metrics["condition_type_accuracy_unguided"]), 3)
    figures["condition_type_energy"] = round(float(metrics["condition_type_energy"]), 3)
    figures["condition_type_energy_unconditional"] = round(float(metrics["condition_type_energy_unguided"]), 3)
    print(f"condition cell_type: {figures['condition_type_accuracy']:.1%} of cells typed as their condition "
          f"(unconditional, same seeds: {figures['condition_type_accuracy_unconditional']:.1%}); energy distance to real cells "
          f"of the type {figures['condition_type_energy']:.3f} vs {figures['condition_type_energy_unconditional']:.3f}", flush=True)

    designed = out / "designed.h5ad"
    _cli("sample", "--checkpoint", checkpoint, "--data", data, "--slice", slice_id, "--mode", "pos_to_expr",
         "--target", "Pcp4:high", "--target-scale", target_scale, "--out", designed, *sampling)
    _cli("evaluate", designed, "--reference", data, "--out", out / "designed.tsv")
    metrics = pd.read_csv(out / "designed.tsv", sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    a = ad.read_h5ad(designed)
    pcp4 = list(a.var_names).index("Pcp4")
    sd = float(np.asarray(a.X[:, pcp4]).std())
    gain = (a.layers["expr_pred"][:, pcp4].mean() - a.layers["expr_pred_unguided"][:, pcp4].mean()) / sd
    ratio = metrics["target_energy_other_genes"] / metrics["target_energy_other_genes_unguided"]
    figures.update({"target_scale": target_scale, "pcp4_gain_sd": round(float(gain), 2),
                    "other_genes_energy_ratio": round(float(ratio), 3),
                    "target_fraction_met": round(float(metrics["target_fraction_met"]), 3),
                    "target_fraction_met_unguided": round(float(metrics["target_fraction_met_unguided"]), 3)})
    print(f"target Pcp4:high, scale {target_scale}: mean Pcp4 +{gain:.2f} sd over the unguided draw; energy distance of the "
          f"other genes to real cells x{ratio:.3f}; targeted cells meeting the target {metrics['target_fraction_met']:.1%} "
          f"(unguided {metrics['target_fraction_met_unguided']:.1%})", flush=True)
    return figures


JOINT_FIGURES = ("cell_type_composition_l1", "nhood_enrichment_corr", "morans_i_corr", "expr_energy_distance_pca")


def joint_cell_type_guidance(checkpoint: Path, data: Path, slice_id: str, seeds: list[int], out: Path,
                             steps: int) -> dict:
    """``joint`` with cell types drawn from the training composition, through the CLI: the default
    guidance (3 at the middle noise levels) against no push (``--guidance-scale 1``), seed by seed,
    scored by ``evaluate`` against the real training slices (first draw)."""
    rows = {}
    for setting, extra in (("scale1", ("--guidance-scale", "1")), ("default", ())):
        for seed in seeds:
            sample = out / f"joint_{setting}_{seed}.h5ad"
            _cli("sample", "--checkpoint", checkpoint, "--data", data, "--slice", slice_id, "--mode", "joint", "--seed", seed,
                 "--num-samples", 1, "--steps", steps, "--out", sample, *extra)
            _cli("evaluate", sample, "--reference", data, "--out", out / f"joint_{setting}_{seed}.tsv")
            table = pd.read_csv(out / f"joint_{setting}_{seed}.tsv", sep="\t")
            rows[setting, seed] = table.query("method == 'alphastomics'").set_index("metric")["value"]
            references = table[table["method"].str.startswith("real:")]
    figures = {}
    print(f"joint {slice_id}, cell types drawn, first draw of seeds {seeds}: no push (scale 1) -> default guidance")
    for metric in JOINT_FIGURES:
        before = [float(rows["scale1", s][metric]) for s in seeds]
        after = [float(rows["default", s][metric]) for s in seeds]
        real = references[references["metric"] == metric].set_index("method")["value"].round(3).to_dict()
        figures[f"joint_drawn_types_{metric}_scale1"] = round(float(np.mean(before)), 3)
        figures[f"joint_drawn_types_{metric}"] = round(float(np.mean(after)), 3)
        print(f"  {metric}: {' / '.join(f'{v:.3f}' for v in before)} -> {' / '.join(f'{v:.3f}' for v in after)} "
              f"(real slices {real})", flush=True)
    return figures


def drop_half_of_nonzeros(expression: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    nonzero = np.argwhere(expression > 0)
    drop = nonzero[rng.random(len(nonzero)) < 0.5]
    dropped = expression.copy()
    dropped[drop[:, 0], drop[:, 1]] = 0
    return dropped


def dropout_regression_baseline(data: Path, train_slices: list[str], dropped: SliceData, neighbours: int = 10,
                                copies: int = 5) -> np.ndarray:
    """A denoiser built for this very task, as the bar the model is measured against: a ridge
    regression from each cell's dropped-out expression and the mean over its spatial neighbours to
    its undropped expression, fitted on the training slices with the same dropout (``copies``
    draws of it). Measured values are kept; zeros get the prediction."""

    def features(slice_data: SliceData, expression: np.ndarray) -> np.ndarray:
        points = slice_data.coords[:, : slice_data.n_dims]
        index = NearestNeighbors(n_neighbors=neighbours + 1).fit(points).kneighbors(points, return_distance=False)[:, 1:]
        return np.hstack([expression, expression[index].mean(1)])

    inputs, targets = [], []
    for slice_id in train_slices:
        training = load_slice(data, slice_id)
        for copy in range(copies):
            inputs.append(features(training, drop_half_of_nonzeros(training.expression, 100 + copy)))
            targets.append(training.expression)
    regression = Ridge(alpha=10.0).fit(np.vstack(inputs), np.vstack(targets))
    predicted = np.maximum(regression.predict(features(dropped, dropped.expression)), 0)
    return np.where(dropped.expression > 0, dropped.expression, predicted).astype(np.float32)


def denoising(checkpoint: Path, data: Path, slice_id: str | None, time_fraction: float, seed: int = 0) -> dict | None:
    """The figures on ``slice_id`` (default: the first slice of the dataset the model was not trained on; None if none)."""
    model = load_model(checkpoint)
    if slice_id is None:
        held_out = [s for s in load_manifest(data)["slices"] if s not in model.train_slices]
        if not held_out:
            return None
        slice_id = held_out[0]
    clean = load_slice(data, slice_id)
    truth = clean.expression
    dropped = dataclasses.replace(clean, expression=drop_half_of_nonzeros(truth, seed))
    started = time.perf_counter()
    denoised, rate = denoise_slice(model, dropped, time_fraction, DEFAULT_DRAWS, seed)
    seconds = time.perf_counter() - started
    untouched, _ = denoise_slice(model, clean, time_fraction, DEFAULT_DRAWS, seed)  # no dropout: nothing should be invented
    baseline = dropout_regression_baseline(data, model.train_slices, dropped)
    measured = np.flatnonzero(clean.gene_mask)

    def median_pearson(values):
        return float(np.median([pearsonr(values[:, g], truth[:, g])[0] for g in measured
                                if truth[:, g].std() > 0 and values[:, g].std() > 0]))

    figures = {"input_pearson": round(median_pearson(dropped.expression), 3), "denoised_pearson": round(median_pearson(denoised), 3),
               "ridge_baseline_pearson": round(median_pearson(baseline), 3),
               "dropout_rate_median": round(float(np.median(rate[measured])), 3),
               "undropped_denoised_pearson": round(median_pearson(untouched), 3), "seconds": round(seconds, 1)}
    print(f"denoise {data.name} {slice_id} (50% of non-zeros dropped, t = {time_fraction}): median per-gene Pearson with "
          f"the undropped values {figures['denoised_pearson']} (dropped input {figures['input_pearson']}; ridge regression "
          f"fitted on the training slices with the same dropout {figures['ridge_baseline_pearson']}), {seconds:.0f} s; "
          f"estimated dropout rate median {figures['dropout_rate_median']} (true 0.5); the undropped slice denoised: "
          f"{figures['undropped_denoised_pearson']}", flush=True)
    return figures


HELD_OUT = "20180424_BZ14_control"
TREATED = "20180419_BZ9_treated"
UP_GENES = ["Egr1", "Fos", "Fosb", "Egr4", "Homer1", "Nrn1"]  # planted x4 in the treated copy
DOWN_GENES = ["Adgrl2", "Bcl6", "Cdh13", "Otof", "Wfs1", "Nov"]  # planted: thinned to 25%


def with_treated_copy(sections: list[Path], out: Path) -> list[Path]:
    """The STARmap sections with obs['condition'] = control, and a copy of BZ9 with a planted
    treatment (condition=treated): real tissue with a per-slice condition whose effect is known."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for path in sections:
        section = ad.read_h5ad(path)
        section.obs["condition"] = "control"
        files.append(out / path.name)
        section.write_h5ad(files[-1])
        if "BZ9" in path.name:
            x = np.asarray(section.X.toarray() if hasattr(section.X, "toarray") else section.X, dtype=np.float32)
            rng = np.random.default_rng(0)
            up, down = section.var_names.get_indexer(UP_GENES), section.var_names.get_indexer(DOWN_GENES)
            x[:, up] *= 4
            x[:, down] = rng.binomial(x[:, down].astype(np.int64), 0.25)
            treated = ad.AnnData(x, obs=section.obs.copy(), var=section.var.copy(), obsm=dict(section.obsm))
            treated.obs_names = [name.replace("control", "treated") for name in section.obs_names]
            treated.obs["slice_id"], treated.obs["condition"] = TREATED, "treated"
            files.append(out / f"starmap_mpfc_{TREATED}.h5ad")
            treated.write_h5ad(files[-1])
    return files


def perturbation(sections: list[Path], config: Path, max_steps: int, out: Path, sampling: tuple[str, ...]) -> dict:
    import yaml

    data = out / "data"
    data.mkdir(parents=True)
    files = with_treated_copy(sections, out / "h5ad")
    _cli("gene-list", *files, "--mode", "intersection", "--out", data / "genes.txt")
    manifests = []
    for f in files:
        manifests.append(data / "shards" / f"{f.stem}.manifest.json")
        _cli("preprocess", f, "--platform", "starmap", "--dataset", "starmap_planted", "--gene-list", data / "genes.txt",
             "--out", data / "shards", "--manifest", manifests[-1], "--slice-key", "slice_id", "--cell-type-key", "cell_type",
             "--slice-covariates", "condition")
    _cli("manifest", *manifests, "--dataset", "starmap_planted", "--out", data / "manifest.json")
    settings = yaml.safe_load(config.read_text())
    settings["model"]["slice_covariates"] = ["condition"]
    settings["training"]["max_steps"] = max_steps
    (out / "config.yaml").write_text(yaml.safe_dump(settings))
    started = time.perf_counter()
    _cli("train", "--config", out / "config.yaml", "--data", data, "--out", out / "model", "--test-slices", HELD_OUT,
         "--export", out / "model.ckpt")
    train_seconds = time.perf_counter() - started
    drawn = out / "treated.h5ad"
    _cli("sample", "--checkpoint", out / "model.ckpt", "--data", data, "--slice", HELD_OUT, "--mode", "pos_to_expr",
         "--slice-condition", "condition=treated", "--out", drawn, *sampling)
    _cli("evaluate", drawn, "--reference", data, "--out", out / "treated.tsv")
    metrics = pd.read_csv(out / "treated.tsv", sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    a = ad.read_h5ad(drawn)
    genes = list(a.var_names)
    shift = a.layers["expr_pred_mean"].mean(0) - a.layers["expr_pred_mean_unguided"].mean(0)
    figures = {"perturbation_shift_pearson": round(float(metrics["perturbation_shift_pearson"]), 3),
               "perturbation_sign_agreement": round(float(metrics["perturbation_sign_agreement"]), 3),
               "perturbation_shift_slope": round(float(metrics["perturbation_shift_slope"]), 3),
               "perturbation_up_genes_shift": round(float(shift[[genes.index(g) for g in UP_GENES]].mean()), 3),
               "perturbation_down_genes_shift": round(float(shift[[genes.index(g) for g in DOWN_GENES]].mean()), 3),
               "perturbation_other_genes_abs_shift": round(float(np.abs(np.delete(
                   shift, [genes.index(g) for g in UP_GENES + DOWN_GENES])).mean()), 3),
               "perturbation_train_seconds": round(train_seconds)}
    print(f"perturbation BZ14 under condition=treated ({max_steps} training steps, {train_seconds:.0f} s): shift Pearson "
          f"{figures['perturbation_shift_pearson']}, sign agreement {figures['perturbation_sign_agreement']}, slope "
          f"{figures['perturbation_shift_slope']}; planted up genes {figures['perturbation_up_genes_shift']:+.3f}, planted down "
          f"{figures['perturbation_down_genes_shift']:+.3f}, other genes mean |shift| {figures['perturbation_other_genes_abs_shift']}",
          flush=True)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results", type=Path)
    p.add_argument("--target-scale", type=float, default=1.0)
    p.add_argument("--denoise-time", type=float, default=DEFAULT_TIME)
    # the pipeline's sampling settings (config/config.yaml), not the model's own defaults
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--perturbation", action="store_true", help="also train a model on a planted condition (minutes) and score it")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"), help="model settings of the perturbation model")
    p.add_argument("--max-steps", type=int, default=1500, help="training steps of the perturbation model")
    p.add_argument("--only-perturbation", action="store_true", help="skip parts 1-3")
    p.add_argument("--joint-guidance", action="store_true",
                   help="also STARmap joint with drawn cell types, default guidance against none, seeds 0-2 (minutes)")
    args = p.parse_args()
    torch.set_num_threads(2)
    starmap = args.results / "starmap_mpfc"
    summary = {}
    sampling = ("--steps", str(args.steps), "--num-samples", str(args.num_samples))
    if args.perturbation or args.only_perturbation:
        sections = sorted(Path("resources/starmap_mpfc").glob("*.h5ad"))
        with tempfile.TemporaryDirectory() as tmp:
            summary.update(perturbation(sections, args.config, args.max_steps, Path(tmp), sampling))
        if args.only_perturbation:
            print(json.dumps(summary))
            return
    with tempfile.TemporaryDirectory() as tmp:
        summary.update(conditional_and_target(starmap / "model/model.ckpt", starmap, HELD_OUT, args.target_scale,
                                              Path(tmp), sampling))
    if args.joint_guidance:
        with tempfile.TemporaryDirectory() as tmp:
            summary.update(joint_cell_type_guidance(starmap / "model/model.ckpt", starmap, HELD_OUT, [0, 1, 2], Path(tmp), args.steps))
    # every dataset with a model under --results (the demo's two, and config/benchmarks/ ones that were run)
    for checkpoint in sorted(args.results.glob("*/model/model.ckpt")):
        directory = checkpoint.parent.parent
        figures = denoising(checkpoint, directory, None, args.denoise_time)
        if figures is not None:
            summary.update({f"denoise_{directory.name}_{k}": v for k, v in figures.items()})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
