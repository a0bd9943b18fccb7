rule report:
    input:
        manifest="results/{dataset}/manifest.json",
        metrics="results/{dataset}/metrics.tsv",
        samples=lambda w: sample_files(w.dataset),
        training="results/{dataset}/model/training.json",
        model="results/{dataset}/model/model.ckpt",
        settings="results/{dataset}/settings/train.yaml",
    output:
        report(
            "results/{dataset}/report.html",
            caption="../report/report.rst",
            category="Benchmark reports",
            labels={"dataset": "{dataset}"},
        ),
    params:
        code=code_fingerprint("report"),
    log:
        "logs/{dataset}/report.log",
    conda:
        ENV
    shell:
        "alphastomics report --dataset {wildcards.dataset} --manifest {input.manifest} --metrics {input.metrics}"
        " --samples {input.samples} --training-log results/{wildcards.dataset}/model/logs/metrics.csv"
        " --config {input.settings} --checkpoint {input.model} --log-dir logs/{wildcards.dataset}"
        " --out {output} > {log} 2>&1"


rule summary:
    input:
        expand("results/{dataset}/metrics.tsv", dataset=DATASETS),
    output:
        report("results/summary.html", caption="../report/summary.rst", category="Benchmark reports"),
    params:
        code=code_fingerprint("report"),
    log:
        "logs/summary.log",
    conda:
        ENV
    shell:
        "alphastomics report --summary --metrics {input} --out {output} > {log} 2>&1"
