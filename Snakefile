# l2g-pipeline: L2G weakly supervised semantic segmentation as a Snakemake DAG.
# Targets are paths: results/{dataset}/... with dataset a key of config["datasets"].
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/gather.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/pseudo_labels.smk"
include: "workflow/rules/seg.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/experiments.smk"


onsuccess:
    record_outputs(current_outputs(workflow.dag), settings, owner)


rule all:
    input:
        "results/demo/miou.json",
        "results/demo/supervised/miou.json",
        expand("results/demo/report/{name}.png", name=("iou_per_class", "samples", "loss_curves", "run_times", "expectations")),
    default_target: True
