rule evaluate:
    input:
        sample="results/{dataset}/samples/{slice}.{mode}.h5ad",
        settings="results/{dataset}/settings/evaluate.yaml",
    output:
        table="results/{dataset}/metrics/{slice}.{mode}.tsv",
        details="results/{dataset}/metrics/{slice}.{mode}.json",
    params:
        code=code_fingerprint("evaluate"),
    log:
        "logs/{dataset}/evaluate/{slice}.{mode}.log",
    conda:
        ENV
    shell:
        "alphastomics evaluate {input.sample:q} --config {input.settings:q} --dataset {wildcards.dataset:q}"
        " --out {output.table:q} > {log:q} 2>&1"


rule gather_metrics:
    input:
        lambda w: metric_files(w.dataset),
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
