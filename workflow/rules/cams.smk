# CAMs of the classifiers on the train split, each exported in shards and scored over background
# thresholds (miou.json; miou_train_subset.json on splits.train_subset, where it is set), each score
# judged against the ranges the config's expect: gives it (cams, cams_train_subset, ...):
#   cls_cams      stage 1 (the plain-CAM baseline)
#   control_cams  stage 1 trained on without the transfer loss, as long as L2G trains
#   cams          the L2G global network


rule export_cams:
    input:
        manifest=MANIFEST,
        model=lambda wc: at(wc.dataset, f"{CAM_MODELS[wc.cams]}/model.pt"),
    output:
        manifest="results/{dataset}/{cams}/manifest-shard-{shard}-of-{shards}.json",
    wildcard_constraints:
        cams=one_of(CAM_MODELS),
    params:
        workers=export_workers,
        options=stage_flags("export_cams"),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/export_{cams}-{shard}-of-{shards}.log",
    benchmark:
        "results/{dataset}/benchmarks/export_{cams}-{shard}-of-{shards}.tsv"
    threads: job_setting("threads", "export_cams")
    resources:
        **job_resources("export_cams"),
    shell:
        launch() + "l2g export-cams --manifest {input.manifest} --model {input.model} --split train"
        " --out results/{wildcards.dataset}/{wildcards.cams} --shard {wildcards.shard}/{wildcards.shards}"
        " {params.workers} {params.options} > {log} 2>&1"


rule evaluate_cams:
    input:
        manifest=MANIFEST,
        cams=result("{cams}/manifest.json"),
    output:
        metrics="results/{dataset}/{cams}/miou{part}.json",
    wildcard_constraints:
        cams=one_of(CAM_MODELS),
        part=PARTS,
    params:
        split=scored_split,
        pred=folder_of("cams"),
        options=lambda wc: cli_flags(settings(wc.dataset).get("evaluate_cams") or {}),
        expect=expect_flags(lambda wc: f"{wc.cams}{wc.part}"),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/evaluate_{cams}{part}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{cams}{part}.tsv"
    threads: job_setting("threads", "evaluate_cams")
    resources:
        **job_resources("evaluate_cams"),
    shell:
        "l2g evaluate --manifest {input.manifest} --split {params.split} --kind cam {params.options}"
        " --pred {params.pred} --out {output.metrics} {params.expect}"
        " --workers {threads} > {log} 2>&1"
