# Pseudo labels: the L2G CAMs labelled (background from a CAM threshold, by default the CAM
# stage's best one, or from the saliency maps of the dataset's source; optionally an ignore band)
# and refined by a dense CRF, in shards; then scored beside the no-CRF labels, the saliency
# baseline, the saliency maps' own score and the CAMs of every classifier (L2G with and without
# saliency among them).


rule refine:
    input:
        unpack(refine_inputs),
    output:
        manifest="results/{dataset}/pseudo_labels/manifest-shard-{shard}-of-{shards}.json",
    params:
        options=stage_flags("refine"),
        cams=folder_of("cams"),
        background=refine_background,
        saliency=saliency_dir,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/refine-{shard}-of-{shards}.log",
    benchmark:
        "results/{dataset}/benchmarks/refine-{shard}-of-{shards}.tsv"
    threads: job_setting("threads", "refine")
    resources:
        **job_resources("refine"),
    shell:
        "l2g refine --manifest {input.manifest} --split train --cams {params.cams}"
        " --out results/{wildcards.dataset}/pseudo_labels --shard {wildcards.shard}/{wildcards.shards}"
        " --workers {threads} {params.background} {params.saliency} {params.options} > {log} 2>&1"


rule score_pseudo_labels:
    input:
        unpack(stage_metrics(cam_metrics)),
        unpack(pseudo_label_maps),
        manifest=MANIFEST,
        labels=result("pseudo_labels/manifest.json"),
        cams=result("cams/manifest.json"),
    output:
        metrics="results/{dataset}/pseudo_labels/miou{part}.json",
    wildcard_constraints:
        part=PARTS,
    params:
        cam_scores=stage_options("cam-scores", cam_metrics),
        split=scored_split,
        labels=folder_of("labels"),
        cams=folder_of("cams"),
        expect=expect_flags(lambda wc: f"pseudo_labels{wc.part}"),
        saliency=saliency_dir,
        saliency_score=saliency_score_flag,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/score_pseudo_labels{part}.log",
    benchmark:
        "results/{dataset}/benchmarks/score_pseudo_labels{part}.tsv"
    threads: job_setting("threads", "score_pseudo_labels")
    resources:
        **job_resources("score_pseudo_labels"),
    shell:
        "l2g score-pseudo-labels --manifest {input.manifest} --split {params.split}"
        " --labels {params.labels} --cams {params.cams} {params.saliency} {params.saliency_score}"
        " {params.cam_scores} {params.expect} --out {output.metrics} --workers {threads} > {log} 2>&1"
