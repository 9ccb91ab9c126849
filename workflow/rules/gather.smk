# Joins the shards of a per-image stage (CAM export, CRF refinement, DeepLab prediction) into one
# complete folder, checking that every image of the split is there exactly once.


rule gather:
    input:
        manifest=MANIFEST,
        shards=shard_manifests,
    output:
        "results/{dataset}/{folder}/manifest.json",
    wildcard_constraints:
        folder=one_of(SHARDED),
    params:
        split=lambda wc: SHARDED[wc.folder],
        shards=lambda wc: settings(wc.dataset)["jobs"]["shards"],
    conda:
        CONDA_ENV
    log:
        "results/{dataset}/logs/gather_{folder}.log",
    benchmark:
        "results/{dataset}/benchmarks/gather_{folder}.tsv"
    threads: job_setting("threads", "gather")
    resources:
        **job_resources("gather"),
    shell:
        "l2g gather --manifest {input.manifest} --split {params.split}"
        " --folder results/{wildcards.dataset}/{wildcards.folder} --shards {params.shards} > {log} 2>&1"
