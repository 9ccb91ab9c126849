"""The pipeline's stages in one place: what each makes under results/{dataset}/, from which other
outputs, and with which settings.

The workflow (wildcards, input functions, the options each job gets), the report, the experiments
(which outputs a variant changes) and the tests read these names; nothing else lists them.

An output ("product") is named by where it lives under results/{dataset}/: `cls` (cls/model.pt),
`cams` (the CAM folder), `cams/miou` (its scores), `seg/logits`, `seg/pred`, `seg/miou` (the final
results/{dataset}/miou.json), ... `made_with` says everything an output depends on: the settings of
its own job and, recursively, those of the outputs it reads. Two runs whose `made_with` of an output
are equal make the same file, so an experiment's variant reuses it (l2g_core.experiments).
"""

from l2g_core.expectations import NO_CRF, named_stages

# What a dataset section describes of its data; a recipe gives everything else (the method: the
# stage sections and the jobs), never these (l2g_core.config.resolve_recipe).
DATA_KEYS = ("kind", "root", "synthetic", "splits", "classes", "empty_images", "recipe")

# The rules, by the name their jobs' settings go under (jobs.threads, gpu, mem_mb, runtime: the
# schema's per-rule keys are these; score_supervised's jobs take score_seg's).
RULES = ("make_synthetic", "prepare", "train_cls", "train_l2g", "train_control", "export_cams", "evaluate_cams",
         "saliency", "score_saliency", "refine", "score_pseudo_labels", "train_seg", "predict_seg", "label_seg",
         "score_seg", "gather", "report", "summarize_experiment")
# The classifiers whose CAMs are exported: {CAM folder: model folder}.
CAM_MODELS = {"cls_cams": "cls", "control_cams": "control", "cams": "l2g", "no_saliency_cams": "l2g_no_saliency"}
# The L2G runs: {model folder: config section of its options}; the second only where the config sets it.
L2G_RUNS = {"l2g": "train_l2g", "l2g_no_saliency": "train_l2g_no_saliency"}
# DeepLab on the pseudo labels, and the fully supervised reference on the ground truth.
SEG_MODELS = ("seg", "supervised")
# The train_seg inits that name a classifier of the run itself: {init: model folder}. Both DeepLabs
# (pseudo labels, ground truth) start from it, so the supervised reference stays the same network.
SEG_INIT_MODELS = {"stage1": "cls", "l2g": "l2g"}
# {model folder: title} of the trained networks (each writes train_log.csv beside its model).
TRAINED_MODELS = {
    "cls": "stage 1 classifier (cls)",
    "l2g": "L2G transfer (l2g)",
    "control": "control classifier (control)",
    "seg": "DeepLab on pseudo labels (seg)",
    "supervised": "DeepLab on ground truth (supervised)",
}
# {product: label} of the scored outputs, in pipeline order (the report's bars, the summaries' rows).
SCORED = {"cls_cams/miou": "plain CAMs, stage 1", "control_cams/miou": "control CAMs", "cams/miou": "L2G CAMs",
          "no_saliency_cams/miou": "L2G CAMs without saliency", "pseudo_labels/miou": "pseudo labels",
          "seg/miou": "DeepLab on pseudo labels", "supervised/miou": "supervised DeepLab reference"}
# Outputs a run makes only where the config asks for them (train_l2g_no_saliency).
OPTIONAL = ("l2g_no_saliency", "no_saliency_cams", "no_saliency_cams/miou")
# Where a run's saliency maps come from (the dataset's `saliency: {source: ...}`): ROOT/Sal as the
# dataset brings them (folder, the default), or made by the pipeline into results/{dataset}/saliency/
# (`l2g saliency`): from the stage-1 CAMs (cams) or by a salient-object network (detector).
SALIENCY_SOURCES = ("folder", "cams", "detector")
# The keys of the saliency section each source reads (the others are left to the other sources).
SALIENCY_OPTIONS = {"folder": (), "detector": ("weights", "input_size"),
                    "cams": ("threshold", "power", "crf", "iterations", "pos_w", "pos_xy_std", "bi_w", "bi_xy_std",
                             "bi_rgb_std")}
SALIENCY = "saliency"  # the folder of the pipeline's maps, and their product
# Per-image folders made in shards, and the split each covers.
SHARDED = {**dict.fromkeys(CAM_MODELS, "train"), SALIENCY: "train", "pseudo_labels": "train",
           **{f"{m}/pred": "val" for m in SEG_MODELS}}
# The part of the training split scored beside it (VOC's 1,464-image train list within train_aug).
SUBSET = "train_subset"
# The control trains like stage 2 (same start, budget, batch, schedule, inputs), with no transfer
# loss: an L2G gain over it is not more training.
CONTROL_KEYS = ("input_size", "epochs", "iterations", "batch_size", "lr", "weight_decay", "momentum", "nesterov",
                "schedule", "step_epochs", "gamma", "poly_power", "poly_step", "accumulate", "seed", "workers",
                "precision", "log_every", "resize", "short_side", "crop_axes", "flip", "jitter", "jitter_formula",
                "image_stats", "decode")
# The model options of stage 1 that a stage-2 run with start: pretrained (official) builds on.
MODEL_KEYS = ("backbone", "init", "pcm", "output_stride")
# The predict_seg keys of the network job (predict-seg); the others (the CRF's) go to label-seg.
NETWORK_KEYS = ("scales", "flip", "batch_size")


# --- the options of each job, from a dataset's settings -------------------------------------------


def l2g_runs(dataset):
    """{config section: options} of a dataset's L2G runs: train_l2g, and train_l2g_no_saliency
    (its keys on top of train_l2g's, use_saliency false) where it is set."""
    runs = {"train_l2g": dict(dataset["train_l2g"])}
    if dataset.get("train_l2g_no_saliency") is not None:
        runs["train_l2g_no_saliency"] = {**runs["train_l2g"], **dataset["train_l2g_no_saliency"], "use_saliency": False}
    return runs


def from_stage1(dataset):
    """Whether stage 2 (L2G and the control) starts from the stage-1 classifier."""
    return dataset["train_l2g"].get("start", "pretrained") == "stage1"


def start_options(dataset):
    """Stage 1's model options, for a stage-2 run that builds fresh networks (start: pretrained)."""
    if from_stage1(dataset):
        return {}
    return {key: value for key, value in dataset["train_cls"].items() if key in MODEL_KEYS}


def l2g_options(dataset, folder):
    """The options of the L2G run of model folder `folder` (None where the config has no such run)."""
    run = l2g_runs(dataset).get(L2G_RUNS[folder])
    if run is None:
        return None
    return {**start_options(dataset), **{key: value for key, value in run.items() if key != "start"}}


def control_options(dataset):
    l2g = dataset["train_l2g"]
    return {**start_options(dataset), **{key: value for key, value in l2g.items() if key in CONTROL_KEYS}}


def prediction_options(dataset, network):
    """The predict_seg options of the network job (network=True) or of the labelling job."""
    return {key: value for key, value in dataset["predict_seg"].items() if (key in NETWORK_KEYS) == network}


def seg_options(dataset):
    """The train_seg options; an `init` of SEG_INIT_MODELS (stage1, l2g) is an input (that classifier
    of the run), not an option."""
    return {key: value for key, value in dataset["train_seg"].items()
            if not (key == "init" and value in SEG_INIT_MODELS)}


def seg_init_model(dataset):
    """The model folder of the run that train_seg starts from (SEG_INIT_MODELS), or None."""
    return SEG_INIT_MODELS.get(dataset["train_seg"].get("init"))


def threshold_from_cams(dataset):
    """Whether refine takes its background threshold from the L2G CAMs' scores (best_threshold)."""
    refine = dataset["refine"]
    return refine.get("threshold") is None and not refine.get("ignore_band")


def saliency_source(dataset):
    """The dataset's saliency source (SALIENCY_SOURCES): folder unless its `saliency` section says otherwise."""
    return (dataset.get("saliency") or {}).get("source", "folder")


def saliency_options(dataset):
    """The source and the options of `l2g saliency` that the dataset's source reads."""
    section, source = dataset.get("saliency") or {}, saliency_source(dataset)
    return {"source": source, **{key: section[key] for key in SALIENCY_OPTIONS[source] if key in section}}


def saliency_users(dataset):
    """The settings of a dataset's run that read the saliency maps, e.g. ['train_l2g.use_saliency: true']."""
    users = [f"{key}.use_saliency: true" for key, run in l2g_runs(dataset).items() if run.get("use_saliency", True)]
    if dataset["refine"].get("background") == "saliency":
        users.append("refine.background: saliency")
    return users


def makes_saliency(dataset):
    """Whether the run makes its own saliency maps: a source other than folder, and a stage reading them."""
    return saliency_source(dataset) != "folder" and bool(saliency_users(dataset))


def saliency_inputs(dataset, reads=True):
    """[the saliency product] for a product that `reads` the maps where the run makes them, else []."""
    return [SALIENCY] if reads and makes_saliency(dataset) else []


def cam_folders(dataset):
    """The CAM folders a dataset's run makes: an L2G run's only where the config has that run."""
    return [folder for folder, model in CAM_MODELS.items() if model not in L2G_RUNS or l2g_options(dataset, model)]


def summary_stages(dataset):
    """{name: product} of the earlier stages whose numbers the final miou.json carries: the CAMs and
    the pseudo labels (with splits.train_subset, both again on that part: NAME_train_subset)."""
    stages = {**{folder: f"{folder}/miou" for folder in cam_folders(dataset)}, "pseudo_labels": "pseudo_labels/miou"}
    if dataset["splits"].get(SUBSET):
        stages.update({f"{name}_{SUBSET}": f"{product}_{SUBSET}" for name, product in list(stages.items())})
    return stages


# The scored outputs whose file also holds the score before the CRF (miou_no_crf): NAME_no_crf.
WITH_NO_CRF = ("pseudo_labels", *SEG_MODELS)


# How far an experiment's runs go (experiments.NAME.score): the CAM scores, the pseudo labels, DeepLab.
SCORE_LEVELS = ("cams", "pseudo_labels", "final")


def score_names(folders, subset, upto="final"):
    """{name: product} of the scores of a run with CAM folders `folders` (and, with `subset`, each
    again on splits.train_subset: NAME_train_subset) up to `upto` (SCORE_LEVELS): from
    pseudo_labels, also the pseudo labels; with final, also seg (the final miou.json) and
    supervised; each again as NAME_no_crf where its file holds miou_no_crf."""
    stages = {folder: f"{folder}/miou" for folder in folders}
    if upto != "cams":
        stages["pseudo_labels"] = "pseudo_labels/miou"
    if subset:
        stages.update({f"{name}_{SUBSET}": f"{product}_{SUBSET}" for name, product in list(stages.items())})
    if upto == "final":
        stages.update({model: f"{model}/miou" for model in SEG_MODELS})
    stages.update({f"{name}{NO_CRF}": product for name, product in list(stages.items())
                   if product.split("/")[0] in WITH_NO_CRF})
    return stages


def scored_stages(dataset):
    """{name: product} of every score of a dataset's run, by the names its `expect:` uses."""
    return score_names(cam_folders(dataset), bool(dataset["splits"].get(SUBSET)))


def expectation_inputs(dataset):
    """The scores the final score reads beyond the ones it carries (summary_stages), for the
    margins and the verdict table of the dataset's `expect:`: those it names (supervised/miou)."""
    carried = {*summary_stages(dataset).values(), "seg/miou"}
    stages = scored_stages(dataset)
    named = [stages[name] for name in named_stages(dataset.get("expect") or {}) if name in stages]
    return sorted(set(named) - carried)


# --- what each output is made from ------------------------------------------------------------


def products(dataset):
    """{product: (the settings of the job making it, [the products it reads])} of a dataset."""
    data = ["data"]
    stage1 = ["cls"] if from_stage1(dataset) else []
    made = {"data": ({key: dataset.get(key) for key in DATA_KEYS if key != "recipe"}, []),
            "cls": (dataset["train_cls"], data),
            "control": (control_options(dataset), data + stage1)}
    for folder in L2G_RUNS:
        if (options := l2g_options(dataset, folder)) is not None:
            made[folder] = (options, data + stage1 + saliency_inputs(dataset, options.get("use_saliency", True)))
    if makes_saliency(dataset):  # the maps, from the stage-1 CAMs or by the detector
        source = ["cls_cams"] if saliency_source(dataset) == "cams" else []
        made[SALIENCY] = (saliency_options(dataset), data + source)
    if saliency_users(dataset):  # the maps the run reads, scored against the ground truth
        made[f"{SALIENCY}/score"] = ({}, data + saliency_inputs(dataset))
    for folder in cam_folders(dataset):
        made[folder] = (dataset["export_cams"], data + [CAM_MODELS[folder]])
        for part in ("", f"_{SUBSET}"):
            made[f"{folder}/miou{part}"] = (dataset.get("evaluate_cams") or {}, data + [folder])
    threshold = ["cams/miou"] if threshold_from_cams(dataset) else []
    labels_read = saliency_inputs(dataset, dataset["refine"].get("background") == "saliency")
    made["pseudo_labels"] = (dataset["refine"], data + ["cams"] + threshold + labels_read)
    cam_scores = [f"{folder}/miou" for folder in cam_folders(dataset)]
    # the saliency baseline and the maps' score come from the maps the run reads
    maps = saliency_inputs(dataset) + ([f"{SALIENCY}/score"] if saliency_users(dataset) else [])
    for part in ("", f"_{SUBSET}"):
        made[f"pseudo_labels/miou{part}"] = ({}, data + ["pseudo_labels", "cams"] + cam_scores + maps)
    seg_start = [folder] if (folder := seg_init_model(dataset)) else []
    made["seg"] = (seg_options(dataset), data + ["pseudo_labels"] + seg_start)
    made["supervised"] = (seg_options(dataset), data + seg_start)
    for model in SEG_MODELS:
        made[f"{model}/logits"] = (prediction_options(dataset, network=True), data + [model])
        made[f"{model}/pred"] = (prediction_options(dataset, network=False), data + [f"{model}/logits"])
    made["supervised/miou"] = ({}, data + ["supervised/pred"])
    made["seg/miou"] = ({}, data + ["seg/pred", *summary_stages(dataset).values(), *expectation_inputs(dataset)])
    return made


def made_with(dataset, product, _made=None):
    """Everything `product` depends on: {settings, inputs: {product: made_with}}; equal for two
    runs exactly when they make the same output."""
    made = products(dataset) if _made is None else _made
    if product not in made:
        raise KeyError(f"no output {product!r} in this dataset's run (products: {', '.join(sorted(made))})")
    settings, inputs = made[product]
    return {"settings": settings, "inputs": {name: made_with(dataset, name, made) for name in inputs}}


def metrics_path(product):
    """The file of a scored product under results/{dataset}/: cams/miou -> cams/miou.json, seg/miou -> miou.json."""
    return "miou.json" if product == "seg/miou" else f"{product}.json"


def product_of(path):
    """The product a path under results/{dataset}/ belongs to: cls/model.pt -> cls, cams/miou.json
    -> cams/miou, seg/pred/manifest.json -> seg/pred, miou.json (and expectations.md, written beside it by
    the same job) -> seg/miou."""
    parts = path.split("/")
    if parts == [SALIENCY, "score.json"]:
        return f"{SALIENCY}/score"
    if len(parts) == 1 and parts[0].startswith(("miou", "expectations")):
        return "seg/miou"
    if parts[0] in SEG_MODELS and len(parts) > 2 and parts[1] in ("logits", "pred"):
        return f"{parts[0]}/{parts[1]}"
    if len(parts) == 2 and parts[1].startswith("miou"):
        stem = parts[1].split(".")[0]
        return f"{parts[0]}/{stem}" if parts[0] not in SEG_MODELS else f"{parts[0]}/miou"
    return parts[0]
