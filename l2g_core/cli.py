"""The `l2g` command: one subcommand per pipeline stage.

Each stage lives in its own module with `configure(parser)` (its options) and `run(args)`.
Modules are imported only when their subcommand runs, so `l2g --help` stays fast (no torch).
A user mistake (L2GError) prints one line and exits 1; argparse usage errors exit 2.
"""

import argparse
import importlib
import sys

from l2g_core import __version__, gpus
from l2g_core.errors import L2GError

# (subcommand, module, one-line help), in pipeline order.
STAGES = (
    ("make-synthetic", "l2g_core.stages.make_synthetic", "generate the synthetic demo dataset (VOC layout)"),
    ("prepare-coco", "l2g_core.stages.prepare_coco", "convert MS COCO 2014 instances to the VOC layout"),
    ("prepare", "l2g_core.stages.prepare", "check a dataset and write its manifest and image-level labels"),
    ("doctor", "l2g_core.stages.doctor",
     "everything a run of a dataset needs, checked before the first GPU hour: one table, exit 1 on a problem"),
    ("convert-weights", "l2g_core.stages.convert_weights",
     "convert MXNet .params weights (the released ImageNet ResNet-38) to a torch state dict"),
    ("train-cls", "l2g_core.stages.train_cls", "stage 1: train the CAM classifier on image-level labels"),
    ("train-l2g", "l2g_core.stages.train_l2g", "stage 2: L2G local-to-global attention transfer"),
    ("export-cams", "l2g_core.stages.export_cams", "multi-scale, flipped CAMs of a classifier, one file per image"),
    ("saliency", "l2g_core.stages.saliency",
     "saliency maps made by the pipeline: from the stage-1 CAMs, or by a salient-object network"),
    ("score-saliency", "l2g_core.stages.score_saliency",
     "saliency maps against the ground-truth foreground: MAE and F-measure"),
    ("refine", "l2g_core.stages.refine", "CRF refinement: pseudo labels from CAMs"),
    ("score-pseudo-labels", "l2g_core.stages.score_pseudo_labels",
     "pseudo labels against the ground truth, beside the no-CRF and saliency baselines"),
    ("train-seg", "l2g_core.stages.train_seg", "DeepLab-v2 trained on the pseudo labels (or the ground truth)"),
    ("predict-seg", "l2g_core.stages.predict_seg", "multi-scale, flipped DeepLab logits, one file per image (GPU)"),
    ("label-seg", "l2g_core.stages.label_seg", "labels from DeepLab logits, optionally CRF-refined (CPU)"),
    ("score-seg", "l2g_core.stages.score_seg", "the final mIoU of the predictions, with the earlier stages' numbers"),
    ("summarize-experiment", "l2g_core.stages.summarize_experiment",
     "an experiment's runs as mean +- std per stage and variant: summary.json, .csv, .md and a plot"),
    ("plot-report", "l2g_core.stages.plot_report",
     "the figures of a finished run for snakemake --report: IoU bars, image grid, losses, run times"),
    ("gather", "l2g_core.stages.gather", "join the shards of a per-image stage into one complete folder"),
    ("evaluate", "l2g_core.stages.evaluate", "score label maps, or CAMs over background thresholds: mIoU and per-class IoU"),
    ("with-gpus", "l2g_core.stages.with_gpus",
     "run a command on N GPUs of its own: claim free devices, set CUDA_VISIBLE_DEVICES, release at exit"),
)


class Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (exit 2), pointing at --help instead of printing the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(modules=None):
    parser = Parser(
        prog="l2g", description="L2G weakly supervised semantic segmentation, one stage at a time.")
    parser.add_argument("--version", action="version", version=f"l2g {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, module_name, help_text in STAGES:
        stage_parser = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if modules is None or name in modules:
            module = importlib.import_module(module_name)
            module.configure(stage_parser)
            stage_parser.set_defaults(run=module.run)
    return parser


def main(argv=None):
    if argv is None:  # the `l2g` program (not a call from Python): in a DDP rank under torchrun,
        try:  # die with torchrun and hold the job's GPU claim (l2g_core.gpus)
            gpus.join_claim()
        except L2GError as error:
            print(f"l2g: error: {error}", file=sys.stderr)
            return 1
    argv = sys.argv[1:] if argv is None else argv
    # Import only the module of the chosen stage (a bare `l2g --help` imports none).
    chosen = [name for name, _, _ in STAGES if name in argv[:1]]
    args = build_parser(modules=chosen).parse_args(argv)
    try:
        args.run(args)
    except L2GError as error:
        print(f"l2g {args.stage}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"l2g {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
