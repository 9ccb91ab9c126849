# Stages 1 and 2: the CAM classifier, L2G attention transfer (l2g/, and l2g_no_saliency/ where the
# config has train_l2g_no_saliency), and the control classifier (trained from where L2G starts, as
# long as L2G trains, without the transfer loss: an L2G gain is not more training). Stage 2 starts
# from stage 1's init weights (start: pretrained, official) or from the stage-1 classifier.
# Each job keeps checkpoint.pt and train_log.csv beside its model: a killed job resumes. L2G reads
# the saliency maps of the dataset's source (ROOT/Sal, or the pipeline's: saliency.smk).


rule train_cls:
    input:
        weights_input("train_cls"),
        manifest=MANIFEST,
    output:
        model="results/{dataset}/cls/model.pt",
    params:
        workers=loader_workers,
        options=stage_flags("train_cls"),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/train_cls.log",
    benchmark:
        "results/{dataset}/benchmarks/train_cls.tsv"
    threads: job_setting("threads", "train_cls")
    resources:
        **job_resources("train_cls"),
    shell:
        launch(ddp=True) + "l2g train-cls --manifest {input.manifest} --out {output.model} {params.workers} {params.options} > {log} 2>&1"


rule train_l2g:
    input:
        unpack(l2g_inputs),
    output:
        model="results/{dataset}/{l2g}/model.pt",
    wildcard_constraints:
        l2g=one_of(L2G_RUNS),
    params:
        start=init_from,
        saliency=saliency_dir,
        workers=loader_workers,
        options=l2g_flags,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/train_{l2g}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_{l2g}.tsv"
    threads: job_setting("threads", "train_l2g")
    resources:
        **job_resources("train_l2g"),
    shell:
        launch(ddp=True) + "l2g train-l2g --manifest {input.manifest} {params.start} {params.saliency}"
        " --out {output.model} {params.workers} {params.options} > {log} 2>&1"


rule train_control:
    input:
        unpack(stage2_inputs),
    output:
        model="results/{dataset}/control/model.pt",
    params:
        start=init_from,
        workers=loader_workers,
        options=control_flags,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/train_control.log",
    benchmark:
        "results/{dataset}/benchmarks/train_control.tsv"
    threads: job_setting("threads", "train_control")
    resources:
        **job_resources("train_control"),
    shell:
        launch(ddp=True) + "l2g train-cls --manifest {input.manifest} {params.start} --out {output.model}"
        " {params.workers} {params.options} > {log} 2>&1"
