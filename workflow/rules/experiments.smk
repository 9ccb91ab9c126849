# Experiments (config `experiments:`): every variant and seed of a sweep is a run of its own,
# results/{dataset}/experiments/{experiment}/{run}/, reading each upstream output from the dataset's
# own folder wherever it would be made the same way (common.smk: at). The summary puts the runs
# side by side: mean +- std per stage and variant, every run's value, a plot, and the verdicts of
# the experiment's expect: on each variant's means (and std).


rule summarize_experiment:
    input:
        lambda wc: [path for metrics in experiment_metrics(wc).values() for path in metrics.values()],
    output:
        json="results/{dataset}/experiments/{experiment}/summary.json",
        csv="results/{dataset}/experiments/{experiment}/summary.csv",
        md="results/{dataset}/experiments/{experiment}/summary.md",
        plot="results/{dataset}/experiments/{experiment}/summary.png",
    wildcard_constraints:
        dataset=one_of(DATASETS),
        experiment=one_of(EXPERIMENTS),
    params:
        runs=experiment_runs,
        expect=lambda wc: json.dumps(entries(config["experiments"][wc.experiment].get("expect") or {})),
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/summarize_{experiment}.log",
    benchmark:
        "results/{dataset}/benchmarks/summarize_{experiment}.tsv"
    threads: job_setting("threads", "summarize_experiment")
    resources:
        **job_resources("summarize_experiment"),
    shell:
        "l2g summarize-experiment --name {wildcards.experiment} --dataset {wildcards.dataset} --runs {params.runs:q}"
        " --expect {params.expect:q}"
        " --out results/{wildcards.dataset}/experiments/{wildcards.experiment} > {log} 2>&1"
