# The figures of a finished run for `snakemake --report report.html` (l2g plot-report): per-class
# IoU of each stage, val images through the pipeline, training losses, stage run times and the
# verdicts of the run's expectations (expectations.json, from the final score). Each
# PNG is a report item with a caption (workflow/report/*.rst). The train logs and benchmark files
# it also reads are written beside the models and by Snakemake, not declared by rules: the models
# and the two final scores (the last jobs of the chain) stand for them.


rule report:
    input:
        manifest="results/{dataset}/data/manifest.json",
        final="results/{dataset}/miou.json",
        supervised="results/{dataset}/supervised/miou.json",
        expectations="results/{dataset}/expectations.json",
        scores=lambda wc: list(summary_metrics(wc.dataset).values()),
        models=expand("results/{{dataset}}/{model}/model.pt", model=TRAINED_MODELS),
        cams="results/{dataset}/cams/manifest.json",
        labels="results/{dataset}/pseudo_labels/manifest.json",
        pred=expand("results/{{dataset}}/{model}/pred/manifest.json", model=SEG_MODELS),
    wildcard_constraints:
        dataset=one_of(DATASETS),
    output:
        iou=report(
            "results/{dataset}/report/iou_per_class.png",
            caption="../report/iou_per_class.rst",
            category="1. Scores",
            subcategory="{dataset}",
        ),
        samples=report(
            "results/{dataset}/report/samples.png",
            caption="../report/samples.rst",
            category="2. Examples",
            subcategory="{dataset}",
        ),
        losses=report(
            "results/{dataset}/report/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="3. Training",
            subcategory="{dataset}",
        ),
        times=report(
            "results/{dataset}/report/run_times.png",
            caption="../report/run_times.rst",
            category="4. Run times",
            subcategory="{dataset}",
        ),
        expectations=report(
            "results/{dataset}/report/expectations.png",
            caption="../report/expectations.rst",
            category="1. Scores",
            subcategory="{dataset}",
        ),
    params:
        images=4,
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/report.log",
    benchmark:
        "results/{dataset}/benchmarks/report.tsv"
    threads: job_setting("threads", "report")
    resources:
        **job_resources("report"),
    shell:
        launch() + "l2g plot-report results/{wildcards.dataset} --out results/{wildcards.dataset}/report"
        " --images {params.images} > {log} 2>&1"
