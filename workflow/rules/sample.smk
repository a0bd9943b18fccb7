rule sample:
    input:
        model="results/{dataset}/model/model.ckpt",
        manifest="results/{dataset}/manifest.json",
    output:
        "results/{dataset}/samples/{slice}.{mode}.h5ad",
    params:
        slice_id=slice_id,
        data=lambda w: f"results/{w.dataset}",
        steps=SETTINGS.sampling.steps,
        sampler=SETTINGS.sampling.sampler,
        expression_temperature=SETTINGS.sampling.expression_temperature,
        num_samples=lambda w: sampling_draws(w.mode),
        posterior_mean_draws=SETTINGS.sampling.posterior_mean_draws,
        seed=SETTINGS.sampling.seed,
        atlas_context_cells=SETTINGS.sampling.atlas_context_cells,
        smoothing_steps=lambda w: SETTINGS.sampling.smoothing_steps(w.mode),
        graph_neighbours=SETTINGS.sampling.expression_graph_neighbours,
        graph_components=SETTINGS.sampling.expression_graph_components,
        graph_pool=SETTINGS.sampling.expression_graph_pool,
        code=code_fingerprint("sample"),
    benchmark:
        "results/{dataset}/benchmarks/alphastomics/{slice}.{mode}.tsv"
    log:
        "logs/{dataset}/sample/{slice}.{mode}.log",
    threads: 1
    conda:
        ENV
    shell:
        "alphastomics --threads {threads} sample --checkpoint {input.model:q} --data {params.data:q} --slice {params.slice_id:q}"
        " --mode {wildcards.mode:q} --steps {params.steps:q} --sampler {params.sampler:q}"
        " --expression-temperature {params.expression_temperature:q}"
        " --num-samples {params.num_samples:q} --posterior-mean-draws {params.posterior_mean_draws:q} --seed {params.seed:q} --dataset {wildcards.dataset:q}"
        " --atlas-context-cells {params.atlas_context_cells:q} --smoothing-steps {params.smoothing_steps:q}"
        " --graph-neighbours {params.graph_neighbours:q} --graph-components {params.graph_components:q}"
        " --graph-pool {params.graph_pool:q}"
        " --out {output:q} > {log:q} 2>&1"
