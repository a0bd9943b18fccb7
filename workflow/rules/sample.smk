rule sample:
    input:
        model="results/{dataset}/model/model.ckpt",
        manifest="results/{dataset}/manifest.json",
    output:
        "results/{dataset}/samples/{slice}.{mode}.h5ad",
    params:
        slice_id=slice_id,
        data=lambda w: f"results/{w.dataset}",
        steps=config.get("sampling", {}).get("steps", 0),
        seed=config.get("sampling", {}).get("seed", 0),
        code=code_fingerprint("sample"),
    log:
        "logs/{dataset}/sample/{slice}.{mode}.log",
    conda:
        ENV
    shell:
        "alphastomics sample --checkpoint {input.model:q} --data {params.data:q} --slice {params.slice_id:q}"
        " --mode {wildcards.mode:q} --steps {params.steps:q} --seed {params.seed:q} --dataset {wildcards.dataset:q}"
        " --out {output:q} > {log:q} 2>&1"
