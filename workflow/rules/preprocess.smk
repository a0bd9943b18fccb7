rule gene_list:
    input:
        # a gene-list file: only that file, so adding an h5ad file does not re-make genes.txt and
        # re-run every file's preprocessing; intersection/union: the panels of all files
        h5ad=lambda w: gene_list_panels(w.dataset),
        given=lambda w: gene_list_file(w.dataset),
    output:
        "results/{dataset}/genes.txt",
    params:
        mode=lambda w: config["datasets"][w.dataset]["gene_list"],
        code=code_fingerprint("preprocess"),
    log:
        "logs/{dataset}/gene_list.log",
    conda:
        ENV
    shell:
        "alphastomics gene-list {input.h5ad} --mode {params.mode} --out {output} > {log} 2>&1"


# One job per input file: adding a file to a platform preprocesses only that file.
rule preprocess:
    input:
        h5ad=lambda w: platform_files(w.dataset, w.platform)[w.file_id],
        genes="results/{dataset}/genes.txt",
    output:
        "results/{dataset}/shards/{platform}/{file_id}.manifest.json",
    params:
        options=preprocess_options,
        code=code_fingerprint("preprocess"),
    log:
        "logs/{dataset}/preprocess/{platform}/{file_id}.log",
    conda:
        ENV
    shell:
        "alphastomics preprocess {input.h5ad} --platform {wildcards.platform} --dataset {wildcards.dataset}"
        " --gene-list {input.genes} --out results/{wildcards.dataset}/shards/{wildcards.platform}"
        " --manifest {output} {params.options} > {log} 2>&1"


rule manifest:
    input:
        per_file_manifests,
    output:
        "results/{dataset}/manifest.json",
    params:
        code=code_fingerprint("preprocess"),
    log:
        "logs/{dataset}/manifest.log",
    conda:
        ENV
    shell:
        "alphastomics manifest {input} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
