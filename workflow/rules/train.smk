rule stage_settings:
    output:
        "results/{dataset}/settings/{stage}.yaml",
    params:
        settings=lambda w: stage_settings(w.stage),
    log:
        "logs/{dataset}/settings_{stage}.log",
    conda:
        ENV
    script:
        "../scripts/write_settings.py"


rule train:
    input:
        manifest="results/{dataset}/manifest.json",
        settings="results/{dataset}/settings/train.yaml",
    output:
        "results/{dataset}/model/training.json",
    params:
        data=lambda w: f"results/{w.dataset}",
        out=lambda w: f"results/{w.dataset}/model",
        test=lambda w: test_slices(w.dataset),
        validation=lambda w: validation_slices(w.dataset),
        frame=lambda w: config["datasets"][w.dataset]["coordinate_frame"],
        section_axis=lambda w: section_axis_option(w.dataset),
        # On SLURM the profile sets mpi="srun" and tasks_per_node = GPUs per node, so srun starts
        # one process per GPU and Lightning reads world size and ranks from SLURM. The task
        # geometry is passed explicitly: the plugin's job step strips SLURM_* variables, and a
        # bare srun would start one task.
        launcher=lambda w, resources: (
            # mpi is a launcher command line of the profile (e.g. "srun --mpi=pmix"): split, then quoted word by word
            [*shlex.split(resources.mpi), f"--nodes={resources.get('nodes', 1)}", f"--ntasks-per-node={resources.tasks_per_node}"]
            if resources.get("mpi")
            else []
        ),
        devices=lambda w, resources: resources.get("tasks_per_node", SETTINGS.training.devices),
        nodes=lambda w, resources: resources.get("nodes", SETTINGS.training.num_nodes),
        code=code_fingerprint("train"),
    benchmark:
        "results/{dataset}/benchmarks/alphastomics/train.tsv"
    # the longest jobs: start them first, peers fill the cores left
    priority: 10
    log:
        "logs/{dataset}/train.log",
    threads: 1
    conda:
        ENV
    shell:
        # --resume: a retried (failed or pre-empted) job continues from its last checkpoint when
        # that checkpoint was made with the same settings and code.
        "{params.launcher:q} alphastomics --threads {threads} train --data {params.data:q} --config {input.settings:q}"
        " --test-slices {params.test:q} --val-slices {params.validation:q} --coordinate-frame {params.frame:q}"
        " {params.section_axis:q}"
        " --devices {params.devices:q} --num-nodes {params.nodes:q}"
        " --out {params.out:q} --resume --no-export > {log:q} 2>&1"


# DeepSpeed writes a checkpoint directory; this rule turns any training checkpoint into the one
# file that sampling loads, calibrating the posterior mean of expression on the training slices.
rule export_model:
    input:
        training="results/{dataset}/model/training.json",
        manifest="results/{dataset}/manifest.json",
    output:
        "results/{dataset}/model/model.ckpt",
    params:
        data=lambda w: f"results/{w.dataset}",
        code=code_fingerprint("export"),
    log:
        "logs/{dataset}/export_model.log",
    threads: 1
    conda:
        ENV
    shell:
        "alphastomics --threads {threads} export --checkpoint {input.training:q} --data {params.data:q} --out {output:q} > {log:q} 2>&1"
