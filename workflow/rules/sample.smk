rule sample:
    input:
        model="results/{dataset}/model/model.ckpt",
        manifest="results/{dataset}/manifest.json",
    output:
        "results/{dataset}/samples/{slice}.{mode}.h5ad",
    params:
        steps=config.get("sampling", {}).get("steps", 0),
        seed=config.get("sampling", {}).get("seed", 0),
        code=code_fingerprint("sample"),
    log:
        "logs/{dataset}/sample/{slice}.{mode}.log",
    conda:
        ENV
    shell:
        "alphastomics sample --checkpoint {input.model} --data results/{wildcards.dataset} --slice {wildcards.slice}"
        " --mode {wildcards.mode} --steps {params.steps} --seed {params.seed} --dataset {wildcards.dataset}"
        " --out {output} > {log} 2>&1"
