# DeepLab: trained on the pseudo labels (seg) and, as the fully supervised reference, on the
# ground truth of the same images with the same budget (supervised); val predictions in shards;
# the final scores results/{dataset}/miou.json and results/{dataset}/supervised/miou.json.


rule train_seg:
    input:
        unpack(seg_inputs),
    output:
        model="results/{dataset}/{model}/model.pt",
    wildcard_constraints:
        model=one_of(SEG_MODELS),
    params:
        source=seg_source,
        workers=loader_workers,
        options=seg_flags,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/train_{model}.log",
    benchmark:
        "results/{dataset}/benchmarks/train_{model}.tsv"
    threads: job_setting("threads", "train_seg")
    resources:
        **job_resources("train_seg"),
    shell:
        launch(ddp=True) + "l2g train-seg --manifest {input.manifest} {params.source} --out {output.model}"
        " {params.workers} {params.options} > {log} 2>&1"


rule predict_seg:
    input:
        manifest=MANIFEST,
        model=result("{model}/model.pt"),
    output:
        manifest="results/{dataset}/{model}/logits/manifest-shard-{shard}-of-{shards}.json",
    wildcard_constraints:
        model=one_of(SEG_MODELS),
    params:
        options=prediction_flags(network=True),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/predict_{model}-{shard}-of-{shards}.log",
    benchmark:
        "results/{dataset}/benchmarks/predict_{model}-{shard}-of-{shards}.tsv"
    threads: job_setting("threads", "predict_seg")
    resources:
        **job_resources("predict_seg"),
    shell:
        launch() + "l2g predict-seg --manifest {input.manifest} --model {input.model} --split val"
        " --out results/{wildcards.dataset}/{wildcards.model}/logits --shard {wildcards.shard}/{wildcards.shards}"
        " {params.options} > {log} 2>&1"


# The labels of one shard from its logits, on the CPU: the GPU is free for the next job while the
# CRF runs (minutes on VOC val, hours on COCO val).
rule label_seg:
    input:
        manifest=MANIFEST,
        logits=result("{model}/logits/manifest-shard-{shard}-of-{shards}.json"),
    output:
        manifest="results/{dataset}/{model}/pred/manifest-shard-{shard}-of-{shards}.json",
    wildcard_constraints:
        model=one_of(SEG_MODELS),
    params:
        options=prediction_flags(network=False),
        logits=folder_of("logits"),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/label_{model}-{shard}-of-{shards}.log",
    benchmark:
        "results/{dataset}/benchmarks/label_{model}-{shard}-of-{shards}.tsv"
    threads: job_setting("threads", "label_seg")
    resources:
        **job_resources("label_seg"),
    shell:
        "l2g label-seg --manifest {input.manifest} --logits {params.logits}"
        " --split val --out results/{wildcards.dataset}/{wildcards.model}/pred"
        " --shard {wildcards.shard}/{wildcards.shards} --workers {threads} {params.options} > {log} 2>&1"


# The final score also judges the run's expectations (config expect:): the ranges on seg and every
# margin between two stages, and writes all the run's verdicts as one table (expectations.md,
# printed at the end of the job).
rule score_seg:
    input:
        unpack(stage_metrics(summary_metrics)),
        unpack(reference_metrics),
        manifest=MANIFEST,
        pred=result("seg/pred/manifest.json"),
    output:
        metrics="results/{dataset}/miou.json",
        table="results/{dataset}/miou.csv",
        verdicts="results/{dataset}/expectations.json",
        verdicts_md="results/{dataset}/expectations.md",
    params:
        stages=stage_options("stage", summary_metrics),
        expect=final_expect_options,
        pred=folder_of("pred"),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/score_seg.log",
    benchmark:
        "results/{dataset}/benchmarks/score_seg.tsv"
    threads: job_setting("threads", "score_seg")
    resources:
        **job_resources("score_seg"),
    shell:
        f"{SCORE_SEG_COMMAND} && cat {{output.verdicts_md}}"


rule score_supervised:
    input:
        manifest=MANIFEST,
        pred=result("supervised/pred/manifest.json"),
    output:
        metrics="results/{dataset}/supervised/miou.json",
        table="results/{dataset}/supervised/miou.csv",
    params:
        stages="",
        expect=expect_flags(lambda wc: "supervised"),
        pred=folder_of("pred"),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/score_supervised.log",
    benchmark:
        "results/{dataset}/benchmarks/score_supervised.tsv"
    threads: job_setting("threads", "score_seg")
    resources:
        **job_resources("score_seg"),
    shell:
        SCORE_SEG_COMMAND
