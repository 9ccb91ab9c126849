# CAMs of three classifiers on the train split, each scored over background thresholds:
#   cls_cams      stage 1 (the plain-CAM baseline)
#   control_cams  stage 1 trained on without the transfer loss, as long as L2G trains
#   cams          the L2G global network
CAM_MODELS = {"cls_cams": "cls", "control_cams": "control", "cams": "l2g"}
# The control run trains like stage 2 (same epochs, batch, schedule, input), with no transfer loss.
CONTROL_KEYS = ("input_size", "epochs", "batch_size", "lr", "weight_decay", "momentum", "schedule",
                "step_epochs", "gamma", "poly_power", "accumulate", "seed", "workers", "amp", "log_every")


def control_flags(wildcards):
    l2g = DATASETS[wildcards.dataset]["train_l2g"]
    return cli_flags({key: value for key, value in l2g.items() if key in CONTROL_KEYS})


rule train_control:
    input:
        manifest="results/{dataset}/data/manifest.json",
        init="results/{dataset}/cls/model.pt",
    output:
        model="results/{dataset}/control/model.pt",
    params:
        options=control_flags,
    log:
        "results/{dataset}/logs/train_control.log",
    benchmark:
        "results/{dataset}/benchmarks/train_control.tsv"
    threads: 2
    shell:
        "l2g train-cls --manifest {input.manifest} --init-from {input.init} --out {output.model}"
        " {params.options} > {log} 2>&1"


rule export_cams:
    input:
        manifest="results/{dataset}/data/manifest.json",
        model=lambda wc: f"results/{wc.dataset}/{CAM_MODELS[wc.cams]}/model.pt",
    output:
        manifest="results/{dataset}/{cams}/manifest.json",
    wildcard_constraints:
        cams="|".join(CAM_MODELS),
    params:
        options=stage_flags("export_cams"),
    log:
        "results/{dataset}/logs/export_{cams}.log",
    benchmark:
        "results/{dataset}/benchmarks/export_{cams}.tsv"
    threads: 2
    shell:
        "l2g export-cams --manifest {input.manifest} --model {input.model} --split train"
        " --out results/{wildcards.dataset}/{wildcards.cams} {params.options} > {log} 2>&1"


rule evaluate_cams:
    input:
        manifest="results/{dataset}/data/manifest.json",
        cams="results/{dataset}/{cams}/manifest.json",
    output:
        metrics="results/{dataset}/{cams}/miou.json",
    wildcard_constraints:
        cams="|".join(CAM_MODELS),
    log:
        "results/{dataset}/logs/evaluate_{cams}.log",
    benchmark:
        "results/{dataset}/benchmarks/evaluate_{cams}.tsv"
    threads: 2
    shell:
        "l2g evaluate --manifest {input.manifest} --split train --kind cam"
        " --pred results/{wildcards.dataset}/{wildcards.cams} --out {output.metrics}"
        " --workers {threads} > {log} 2>&1"
