# Pseudo labels: the L2G CAMs refined by a dense CRF at the background threshold chosen on the
# train split (cams/miou.json), then scored beside the no-CRF labels and the saliency baseline.


rule refine:
    input:
        manifest="results/{dataset}/data/manifest.json",
        cams="results/{dataset}/cams/manifest.json",
        metrics="results/{dataset}/cams/miou.json",
    output:
        manifest="results/{dataset}/pseudo_labels/manifest.json",
    params:
        options=stage_flags("refine"),
        # An ignore band sets both background scores itself; otherwise the CAM stage's best one.
        background=lambda wc, input: (
            "" if DATASETS[wc.dataset]["refine"].get("ignore_band") else f"--threshold-from {input.metrics}"
        ),
    log:
        "results/{dataset}/logs/refine.log",
    benchmark:
        "results/{dataset}/benchmarks/refine.tsv"
    threads: 2
    shell:
        "l2g refine --manifest {input.manifest} --split train --cams results/{wildcards.dataset}/cams"
        " --out results/{wildcards.dataset}/pseudo_labels --workers {threads}"
        " {params.background} {params.options} > {log} 2>&1"


rule score_pseudo_labels:
    input:
        manifest="results/{dataset}/data/manifest.json",
        labels="results/{dataset}/pseudo_labels/manifest.json",
        cams="results/{dataset}/cams/manifest.json",
        metrics="results/{dataset}/cams/miou.json",
    output:
        metrics="results/{dataset}/pseudo_labels/miou.json",
    log:
        "results/{dataset}/logs/score_pseudo_labels.log",
    benchmark:
        "results/{dataset}/benchmarks/score_pseudo_labels.tsv"
    threads: 2
    shell:
        "l2g score-pseudo-labels --manifest {input.manifest} --split train"
        " --labels results/{wildcards.dataset}/pseudo_labels --cams results/{wildcards.dataset}/cams"
        " --threshold-from {input.metrics} --out {output.metrics} --workers {threads} > {log} 2>&1"
