"""`l2g train-cls`: stage 1, the CAM classifier trained on image-level labels."""

from dataclasses import asdict
from pathlib import Path

from l2g_core.classifier_setup import add_model_arguments, build_or_load, init_file
from l2g_core.data.torch_data import LabelledImages
from l2g_core.errors import L2GError
from l2g_core.model_io import save_classifier
from l2g_core.models import classification_loss
from l2g_core.training import (
    Trainer,
    add_image_arguments,
    add_training_arguments,
    image_options_from_args,
    start_training,
)


def configure(parser):
    parser.add_argument("--manifest", required=True, help="results/{dataset}/data/manifest.json")
    parser.add_argument("--out", required=True, help="model file to write (results/{dataset}/cls/model.pt)")
    parser.add_argument("--input-size", type=int, required=True, help="side of the square training input")
    parser.add_argument("--init-from", default=None,
                        help="continue from a classifier file (model options are then taken from it); "
                             "the control run of the CAM stage starts this way where L2G starts from stage 1")
    add_model_arguments(parser)
    add_image_arguments(parser)
    add_training_arguments(parser)


def run(args):
    if args.input_size < 32:
        raise L2GError(f"--input-size must be at least 32, got {args.input_size}")
    images = image_options_from_args(args)
    manifest, settings, runtime = start_training(args, "train-cls")
    model = build_or_load(args, manifest)
    dataset = LabelledImages(manifest, "train", args.input_size, options=images, seed=settings.seed)
    describe = {"stage": "cls", "model": model.build_args, "init": args.init, "input_size": args.input_size,
                "init_from": str(Path(args.init_from).resolve()) if args.init_from else None,
                "image_options": asdict(images), "image_stats": images.stats}
    trainer = Trainer({"model": model}, dataset, settings, runtime, Path(args.out).parent, describe,
                      inputs=[args.manifest, args.init_from, init_file(args.init)])

    def step(batch, generator):
        out = trainer.wrapped["model"](batch["image"])
        return {"loss": classification_loss(out["logits"].float(), batch["label"])}

    trainer.fit(step)
    if runtime.is_main:
        save_classifier(args.out, model, stage="cls", class_names=manifest["class_names"],
                        settings={**describe, **vars(settings), "precision_applied": runtime.applied_precision})
        print(f"wrote {args.out}")
