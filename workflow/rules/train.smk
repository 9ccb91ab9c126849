# Stages 1 and 2: the CAM classifier and L2G attention transfer.
# Each job keeps checkpoint.pt and train_log.csv beside its model: a killed job resumes.


rule train_cls:
    input:
        manifest="results/{dataset}/data/manifest.json",
    output:
        model="results/{dataset}/cls/model.pt",
    params:
        options=stage_flags("train_cls"),
    log:
        "results/{dataset}/logs/train_cls.log",
    benchmark:
        "results/{dataset}/benchmarks/train_cls.tsv"
    threads: 2
    shell:
        "l2g train-cls --manifest {input.manifest} --out {output.model} {params.options} > {log} 2>&1"


rule train_l2g:
    input:
        manifest="results/{dataset}/data/manifest.json",
        init="results/{dataset}/cls/model.pt",
    output:
        model="results/{dataset}/l2g/model.pt",
    params:
        options=stage_flags("train_l2g"),
    log:
        "results/{dataset}/logs/train_l2g.log",
    benchmark:
        "results/{dataset}/benchmarks/train_l2g.tsv"
    threads: 2
    shell:
        "l2g train-l2g --manifest {input.manifest} --init-from {input.init} --out {output.model}"
        " {params.options} > {log} 2>&1"
