rule report:
    input:
        manifest="results/{dataset}/manifest.json",
        metrics="results/{dataset}/metrics.tsv",
        runs="results/{dataset}/methods.tsv",
        samples=lambda w: sample_files(w.dataset),
        # the peers' samples, drawn beside AlphaSTomics' (expr_to_pos layouts, per-gene accuracy of
        # pos_to_expr and impute); their status says which ran
        peer_status=lambda w: peer_files(w.dataset, "status.json"),
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
        training_log=lambda w: f"results/{w.dataset}/model/logs/metrics.csv",
        log_dir=lambda w: f"logs/{w.dataset}",
        code=code_fingerprint("report"),
    log:
        "logs/{dataset}/report.log",
    conda:
        ENV
    shell:
        "alphastomics report --dataset {wildcards.dataset:q} --manifest {input.manifest:q} --metrics {input.metrics:q}"
        " --runs {input.runs:q} --samples {input.samples:q} --peer-status {input.peer_status:q}"
        " --training-log {params.training_log:q}"
        " --config {input.settings:q} --checkpoint {input.model:q} --log-dir {params.log_dir:q}"
        " --out {output:q} > {log:q} 2>&1"


# The summary links every dataset's report, so it waits for them (a link to a report that is not
# there yet would be dropped, or point at a stale one).
rule summary:
    input:
        metrics=expand("results/{dataset}/metrics.tsv", dataset=DATASETS),
        runs=expand("results/{dataset}/methods.tsv", dataset=DATASETS),
        reports=expand("results/{dataset}/report.html", dataset=DATASETS),
    output:
        html=report("results/summary.html", caption="../report/summary.rst", category="Benchmark reports"),
        targets="results/targets.txt",
    params:
        code=code_fingerprint("report"),
    log:
        "logs/summary.log",
    conda:
        ENV
    shell:
        "alphastomics report --summary --metrics {input.metrics:q} --runs {input.runs:q} --reports {input.reports:q}"
        " --targets {output.targets:q} --out {output.html:q} > {log:q} 2>&1"
