rule gene_list:
    input:
        # a gene-list file: only that file, so adding an h5ad file does not re-make genes.txt and
        # re-run every file's preprocessing; intersection/union/highly_variable: every file's panel
        h5ad=lambda w: gene_list_panels(w.dataset),
        given=lambda w: gene_list_file(w.dataset),
    output:
        genes="results/{dataset}/genes.txt",
        record="results/{dataset}/genes.selection.json",
    params:
        mode=lambda w: config["datasets"][w.dataset]["gene_list"],
        # highly_variable is chosen on the training slices only, read as preprocessing reads them
        held_out=lambda w: gene_selection_held_out(w.dataset),
        file_options=lambda w: gene_selection_file_options(w.dataset),
        code=code_fingerprint("gene-list"),
    log:
        "logs/{dataset}/gene_list.log",
    conda:
        ENV
    shell:
        "alphastomics gene-list {input.h5ad:q} --mode {params.mode:q} --out {output.genes:q} --record {output.record:q}"
        " {params.held_out:q} {params.file_options:q} > {log:q} 2>&1"


# One job per input file: adding a file to a platform preprocesses only that file.
rule preprocess:
    input:
        h5ad=lambda w: platform_files(w.dataset, w.platform)[w.file_id],
        genes="results/{dataset}/genes.txt",
    output:
        "results/{dataset}/shards/{platform}/{file_id}.manifest.json",
    params:
        options=preprocess_options,
        shards=lambda w: f"results/{w.dataset}/shards/{w.platform}",
        code=code_fingerprint("preprocess"),
    log:
        "logs/{dataset}/preprocess/{platform}/{file_id}.log",
    conda:
        ENV
    shell:
        "alphastomics preprocess {input.h5ad:q} --platform {wildcards.platform:q} --dataset {wildcards.dataset:q}"
        " --gene-list {input.genes:q} --out {params.shards:q} --manifest {output:q} {params.options:q} > {log:q} 2>&1"


rule manifest:
    input:
        manifests=per_file_manifests,
        gene_selection="results/{dataset}/genes.selection.json",
    output:
        "results/{dataset}/manifest.json",
    params:
        code=code_fingerprint("manifest"),
    log:
        "logs/{dataset}/manifest.log",
    conda:
        ENV
    shell:
        "alphastomics manifest {input.manifests:q} --gene-selection {input.gene_selection:q} --dataset {wildcards.dataset:q}"
        " --out {output:q} > {log:q} 2>&1"
