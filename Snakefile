# l2g-pipeline: L2G weakly supervised semantic segmentation as a Snakemake DAG.
# Targets are paths: results/{dataset}/... with dataset a key of config["datasets"].
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/pseudo_labels.smk"


rule all:
    input:
        "results/demo/cls_cams/miou.json",
        "results/demo/control_cams/miou.json",
        "results/demo/cams/miou.json",
        "results/demo/pseudo_labels/miou.json",
    default_target: True
