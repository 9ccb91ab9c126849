# Saliency maps made by the pipeline, for a dataset whose `saliency: {source: ...}` is cams (from
# the stage-1 CAMs, CPU) or detector (a salient-object network from a weights file, a GPU job:
# jobs.gpu.saliency), in shards joined by gather into results/{dataset}/saliency/; L2G and the
# pseudo labels then read them (--saliency-dir). The maps a run reads, its own or ROOT/Sal (source
# folder), are scored against the ground-truth foreground: saliency/score.json (MAE, F-measure).


rule saliency:
    input:
        unpack(saliency_inputs),
    output:
        manifest="results/{dataset}/saliency/manifest-shard-{shard}-of-{shards}.json",
    params:
        source=saliency_source_flags,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/saliency-{shard}-of-{shards}.log",
    benchmark:
        "results/{dataset}/benchmarks/saliency-{shard}-of-{shards}.tsv"
    threads: job_setting("threads", "saliency")
    resources:
        **job_resources("saliency", gpu=saliency_gpus),
    shell:
        launch() + "l2g saliency --manifest {input.manifest} --split train {params.source}"
        " --out results/{wildcards.dataset}/saliency --shard {wildcards.shard}/{wildcards.shards}"
        " --workers {threads} > {log} 2>&1"


rule score_saliency:
    input:
        unpack(saliency_score_inputs),
    output:
        score="results/{dataset}/saliency/score.json",
    params:
        maps=saliency_dir,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/score_saliency.log",
    benchmark:
        "results/{dataset}/benchmarks/score_saliency.tsv"
    threads: job_setting("threads", "score_saliency")
    resources:
        **job_resources("score_saliency"),
    shell:
        "l2g score-saliency --manifest {input.manifest} --split train {params.maps}"
        " --out {output.score} --workers {threads} > {log} 2>&1"
