# Stage 0: the dataset (generated for synthetic datasets), its checks and its manifest.


rule make_synthetic:
    output:
        directory("results/{dataset}/data/synthetic"),
    wildcard_constraints:
        dataset=one_of(SYNTHETIC),
    params:
        gen=lambda wc: DATASETS[wc.dataset]["synthetic"],
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/make_synthetic.log",
    benchmark:
        "results/{dataset}/benchmarks/make_synthetic.tsv"
    threads: job_setting("threads", "make_synthetic")
    resources:
        **job_resources("make_synthetic"),
    shell:
        "l2g make-synthetic {output} --train {params.gen[train]} --val {params.gen[val]}"
        " --size {params.gen[size]} --seed {params.gen[seed]} --workers {threads} > {log} 2>&1"


rule prepare:
    input:
        dataset_input,
    output:
        manifest="results/{dataset}/data/manifest.json",
        labels="results/{dataset}/data/labels.json",
        train="results/{dataset}/data/train.txt",
        val="results/{dataset}/data/val.txt",
    wildcard_constraints:
        dataset=one_of(DATASETS),
    params:
        kind=lambda wc: DATASETS[wc.dataset]["kind"],
        classes=lambda wc: cli_flags({"classes": DATASETS[wc.dataset].get("classes")}),
        root=dataset_root,
        splits=lambda wc: DATASETS[wc.dataset]["splits"],
        empty=lambda wc: DATASETS[wc.dataset].get("empty_images", "skip"),
        subset=lambda wc: f"--split {SUBSET}={shlex.quote(subset)}" if (subset := DATASETS[wc.dataset]["splits"].get(SUBSET)) else "",
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/prepare.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare.tsv"
    threads: job_setting("threads", "prepare")
    resources:
        **job_resources("prepare"),
    shell:
        "l2g prepare --name {wildcards.dataset} --kind {params.kind} {params.classes} --root {params.root:q}"
        " --split train={params.splits[train]:q} --split val={params.splits[val]:q} {params.subset}"
        " --empty-images {params.empty} --out {output.manifest} --workers {threads} > {log} 2>&1"
