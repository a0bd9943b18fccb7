# Peer methods (config `methods:`): each run writes a sample file in the sampler's format and,
# whatever happens, a status record; a failure (not installed, too slow for its time limit, out of
# memory, an error) is recorded there and the pipeline goes on, so the report shows it as failed.
# Wall time and peak memory of every run: the `benchmark:` files, gathered by `method_runs`.


rule peer:
    input:
        manifest="results/{dataset}/manifest.json",
        # the model's own embedding (domains) needs the model
        model=lambda w: [f"results/{w.dataset}/model/model.ckpt"] if w.method == "alphastomics" else [],
    output:
        status="results/{dataset}/peers/{method}/{slice}.{mode}.status.json",
    params:
        sample=lambda w: f"results/{w.dataset}/peers/{w.method}/{w.slice}.{w.mode}.h5ad",
        slice_id=slice_id,
        data=lambda w: f"results/{w.dataset}",
        exclude=lambda w: training_excluded(w.dataset),
        frame=lambda w: config["datasets"][w.dataset]["coordinate_frame"],
        time_limit=lambda w: time_limit(w.method),
        holdout_fraction=SETTINGS.sampling.holdout_fraction,
        holdout_seed=SETTINGS.sampling.holdout_seed,
        seed=SETTINGS.sampling.seed,
        checkpoint=lambda w, input: ["--checkpoint", input.model[0]] if input.model else [],
        options=lambda w: method_options(w.method),
        code=code_fingerprint("peer"),
    benchmark:
        "results/{dataset}/benchmarks/{method}/{slice}.{mode}.tsv"
    log:
        "logs/{dataset}/peers/{method}/{slice}.{mode}.log",
    threads: 1
    conda:
        ENV
    shell:
        "alphastomics --threads {threads} peer --method {wildcards.method:q} --mode {wildcards.mode:q}"
        " --data {params.data:q} --slice {params.slice_id:q} --exclude-slices {params.exclude:q}"
        " --coordinate-frame {params.frame:q} --time-limit {params.time_limit:q}"
        " --holdout-genes {params.holdout_fraction:q} --holdout-seed {params.holdout_seed:q} --seed {params.seed:q}"
        " {params.checkpoint:q} {params.options:q} --dataset {wildcards.dataset:q}"
        " --out {params.sample:q} --status {output.status:q} > {log:q} 2>&1"


rule evaluate_peer:
    input:
        status="results/{dataset}/peers/{method}/{slice}.{mode}.status.json",
        settings="results/{dataset}/settings/evaluate.yaml",
    output:
        table="results/{dataset}/peers/{method}/{slice}.{mode}.tsv",
        details="results/{dataset}/peers/{method}/{slice}.{mode}.json",
    params:
        sample=lambda w: f"results/{w.dataset}/peers/{w.method}/{w.slice}.{w.mode}.h5ad",
        code=code_fingerprint("evaluate"),
    log:
        "logs/{dataset}/evaluate/{method}.{slice}.{mode}.log",
    threads: 1
    conda:
        ENV
    shell:
        "alphastomics --threads {threads} evaluate {params.sample:q} --if-status {input.status:q}"
        " --config {input.settings:q} --dataset {wildcards.dataset:q} --method {wildcards.method:q}"
        " --out {output.table:q} > {log:q} 2>&1"


# Every method run of a dataset (AlphaSTomics' training and samples, every peer): status, wall time
# and peak memory. Benchmark files are read as parameters: Snakemake writes them when a job ends.
rule method_runs:
    input:
        manifest="results/{dataset}/manifest.json",
        status=lambda w: peer_files(w.dataset, "status.json"),
        samples=lambda w: sample_files(w.dataset),
        training="results/{dataset}/model/training.json",
    output:
        "results/{dataset}/methods.tsv",
    params:
        benchmarks=lambda w: benchmark_files(w.dataset),
        code=code_fingerprint("runs"),
    log:
        "logs/{dataset}/method_runs.log",
    conda:
        ENV
    shell:
        "alphastomics runs --dataset {wildcards.dataset:q} --manifest {input.manifest:q} --status {input.status:q}"
        " --benchmarks {params.benchmarks:q} --out {output:q} > {log:q} 2>&1"
