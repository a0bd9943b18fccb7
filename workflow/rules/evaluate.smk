rule evaluate:
    input:
        sample="results/{dataset}/samples/{slice}.{mode}.h5ad",
        settings="results/{dataset}/settings/evaluate.yaml",
        # the training slices' shards: reference rows (real slices, training mean) and joint's
        # distribution metrics are read against them
        manifest="results/{dataset}/manifest.json",
    output:
        table="results/{dataset}/metrics/{slice}.{mode}.tsv",
        details="results/{dataset}/metrics/{slice}.{mode}.json",
    params:
        reference=lambda w: f"results/{w.dataset}",
        code=code_fingerprint("evaluate"),
    log:
        "logs/{dataset}/evaluate/{slice}.{mode}.log",
    threads: 1
    conda:
        ENV
    shell:
        "alphastomics --threads {threads} evaluate {input.sample:q} --config {input.settings:q} --dataset {wildcards.dataset:q}"
        " --reference {params.reference:q} --out {output.table:q} > {log:q} 2>&1"


rule gather_metrics:
    input:
        lambda w: metric_files(w.dataset),
        lambda w: peer_files(w.dataset, "tsv"),
    output:
        "results/{dataset}/metrics.tsv",
    params:
        code=code_fingerprint("evaluate"),
    log:
        "logs/{dataset}/gather_metrics.log",
    conda:
        ENV
    shell:
        "alphastomics gather {input:q} --out {output:q} > {log:q} 2>&1"
