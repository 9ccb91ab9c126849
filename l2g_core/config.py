"""The pipeline configuration: loading, schema validation, one-line errors.

The schema (workflow/schemas/config.schema.yaml) is the single description of every key; this
module turns jsonschema's verdicts into one line that names the key and the fix.
"""

from pathlib import Path

import jsonschema
import yaml

from l2g_core.data.classes import CLASSES_FILE, first_repeated
from l2g_core.errors import L2GError
from l2g_core.expectations import other_stage
from l2g_core.pipeline import CAM_MODELS, DATA_KEYS, SEG_INIT_MODELS, l2g_runs, score_names, scored_stages

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def load_yaml(path, what="config"):
    path = Path(path)
    if not path.is_file():
        raise L2GError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise L2GError(f"{path}: not valid YAML{where}") from None


def _describe(error, path):
    """One line for one jsonschema error at key `path`, phrased for someone editing config.yaml."""
    where = ".".join(str(part) for part in path) or "(top level)"
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown key {unknown[0]!r}{hint}"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: expected {expected}, got {error.instance!r}"
    if kind == "enum":
        return f"{where}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return f"{where}: {error.instance!r} is out of range (must be {relation} {error.validator_value})"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"{where}: missing key {missing[0]!r}"
    if kind == "minItems":
        return f"{where}: needs at least {error.validator_value} item(s)"
    return f"{where}: {error.message}"


# Keys a recipe never gives: the data (DATA_KEYS) and what the dataset's scores should be (`expect:`,
# figures of that data).
OWN_KEYS = (*DATA_KEYS, "expect")


def deep_merge(base, override):
    """`base` with `override` on top: dictionaries merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


def recipe_chain(datasets, name):
    """[name, its recipe, the recipe's recipe, ...]: where a dataset's settings come from, its own
    first. An unknown recipe or a cycle is one line; a recipe that is not a name ends the chain
    (the schema names that mistake)."""
    chain = [name]
    while True:
        section = datasets[chain[-1]]
        recipe = section.get("recipe") if isinstance(section, dict) else None
        if not isinstance(recipe, str):
            return chain
        if recipe not in datasets:
            raise L2GError(f"datasets.{chain[-1]}.recipe: {recipe!r} is not a dataset of this config "
                           f"(one of {', '.join(sorted(datasets))})")
        if recipe in chain:
            raise L2GError(f"datasets.{chain[-1]}.recipe: a cycle ({' -> '.join(chain + [recipe])})")
        chain.append(recipe)


def resolve_recipe(datasets, name):
    """Dataset `name` with its recipe chain under it: each recipe's method settings, the
    dataset's own keys on top, the dataset's data keys and expectations only."""
    chain = recipe_chain(datasets, name)
    settings = datasets[chain[-1]]
    for below in reversed(chain[:-1]):
        method = {key: value for key, value in settings.items() if key not in OWN_KEYS}
        settings = deep_merge(method, datasets[below])
    return settings


def resolve_recipes(config):
    """{name: dataset settings} with every recipe resolved (the config itself is left as it is)."""
    datasets = config.get("datasets") if isinstance(config, dict) else None
    if not isinstance(datasets, dict):
        return datasets
    return {name: resolve_recipe(datasets, name) for name in datasets}


def written_at(config, path):
    """The key path as the user wrote it: inside a dataset, the first dataset of its recipe chain
    whose section holds the key (the deepest recipe when none does; a data key or expect is never
    inherited)."""
    if len(path) < 3 or path[0] != "datasets" or path[2] in OWN_KEYS:
        return path
    chain = recipe_chain(config["datasets"], path[1])
    for name in chain:
        node = config["datasets"][name]
        for part in path[2:]:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return ["datasets", name, *path[2:]]
    return ["datasets", chain[-1], *path[2:]]


def check_schema(instance, schema, written):
    """Raise L2GError with one line for jsonschema's best error, naming the key where the user wrote
    it (`written(path)`)."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    if error is not None:
        raise L2GError(_describe(error, written(list(error.absolute_path))))


def validate_config(config, schema_path=SCHEMA_PATH):
    """Check `config`, its recipes resolved, against the schema and the file system; raise
    L2GError with one line naming the key where the user wrote it. Returns the resolved datasets."""
    schema = load_yaml(schema_path, "schema")
    resolved = dict(config, datasets=resolve_recipes(config)) if isinstance(config, dict) else config
    check_schema(resolved, schema, lambda path: written_at(config, path))
    # a recipe before the datasets built on it: a mistake they inherit is named where it was written
    for name in sorted(resolved["datasets"], key=lambda n: len(recipe_chain(config["datasets"], n))):
        check_dataset(name, resolved["datasets"][name])
    check_experiments(config)
    return resolved["datasets"]


def check_settings(name, settings, written, schema_path=SCHEMA_PATH):
    """Check one dataset's settings (an experiment's run) against the schema's dataset and the file
    system; `written(path)` names where the user wrote the key at `path`. Returns the settings."""
    schema = load_yaml(schema_path, "schema")
    check_schema(settings, {"$ref": "#/$defs/dataset", "$defs": schema["$defs"]}, written)
    check_dataset(name, settings, run=True)
    return settings


def check_experiments(config):
    """Mistakes in the experiments section, one line each: a data key or expect in a variant (a run
    is the same data with another method; an experiment's expectations are its own `expect:`), a
    variant named like a seed's run, an expectation on a score the experiment does not make."""
    for name, experiment in (config.get("experiments") or {}).items():
        for variant, overrides in (experiment.get("variants") or {}).items():
            data_keys = sorted(set(overrides or {}) & set(DATA_KEYS))
            if data_keys:
                raise L2GError(f"experiments.{name}.variants.{variant}.{data_keys[0]}: a variant changes the method, "
                               f"not the data (make another dataset with recipe: for that)")
            if "expect" in (overrides or {}):
                raise L2GError(f"experiments.{name}.variants.{variant}.expect: a variant keeps its dataset's "
                               f"expectations; put the experiment's own under experiments.{name}.expect")
            if variant.startswith("seed"):
                raise L2GError(f"experiments.{name}.variants.{variant}: a variant name may not start with 'seed' "
                               f"(the runs of a seed are named seedN)")
        score = experiment.get("score", "final")
        names = score_names(CAM_MODELS, subset=True, upto=score)
        stops = {"cams": " (score: cams stops at the CAM scores)",
                 "pseudo_labels": " (score: pseudo_labels stops at the pseudo labels)"}
        check_expectations(f"experiments.{name}.expect", experiment.get("expect") or {}, names, stops.get(score, ""))


def check_expectations(where, expect, names, why=""):
    """`expect:` names scores the run makes (`names`), and each expectation has a bound and at most
    one stage to compare with, not itself; a std is of a stage's own scores."""
    for stage, entries in expect.items():
        if stage not in names:
            raise L2GError(f"{where}.{stage}: not a score of this run{why}; one of {', '.join(names)}")
        for index, entry in enumerate(entries):
            at = f"{where}.{stage}.{index}"
            if entry.get("min") is None and entry.get("max") is None:
                raise L2GError(f"{at}: give min, max or both (a fraction, as miou.json holds it)")
            if entry.get("min") is not None and entry.get("max") is not None and entry["min"] > entry["max"]:
                raise L2GError(f"{at}: min {entry['min']} is above max {entry['max']}")
            if "minus" in entry and "divided_by" in entry:
                raise L2GError(f"{at}: give minus or divided_by, not both")
            other = other_stage(entry)
            key = "minus" if "minus" in entry else "divided_by"
            if other is not None and other not in names:
                raise L2GError(f"{at}.{key}: {other!r} is not a score of this run{why}; one of {', '.join(names)}")
            if other == stage:
                raise L2GError(f"{at}.{key}: compares {stage} with itself")
            if other is not None and entry.get("statistic") == "std":
                raise L2GError(f"{at}.statistic: a std is of the stage's own scores; remove {key}")


def check_classes(name, dataset):
    """A custom dataset names its classes (here or in ROOT/classes.txt), once each; no other does."""
    kind, classes, root = dataset["kind"], dataset.get("classes"), dataset.get("root")
    if kind != "custom":
        if classes is not None:
            raise L2GError(f"datasets.{name}.classes: only a dataset of kind custom names its classes "
                           f"(kind {kind} has its own)")
        return
    if classes is None and root is not None and not (Path(root) / CLASSES_FILE).is_file():
        raise L2GError(f"datasets.{name}: kind custom needs its class names: set classes: [...] or write "
                       f"them, one per line, to {Path(root) / CLASSES_FILE}")
    twice = first_repeated(classes or [])
    if twice is not None:
        raise L2GError(f"datasets.{name}.classes: {twice!r} is listed twice")


def check_dataset(name, dataset, run=False):
    """The checks beyond the schema of a dataset's settings (or, with `run`, an experiment run's: its
    dataset's expectations on a score the variant does not make, e.g. without train_l2g_no_saliency,
    are not measured there rather than refused, since a variant cannot change them)."""
    check_classes(name, dataset)
    kind, root = dataset["kind"], dataset.get("root")
    if kind == "synthetic":
        if root is not None:
            raise L2GError(f"datasets.{name}.root: a synthetic dataset is generated under "
                           f"results/{name}/; remove the root setting")
        if "synthetic" not in dataset:
            raise L2GError(f"datasets.{name}: missing key 'synthetic' (train, val, size, seed)")
    elif root is not None and not Path(root).is_dir():
        raise L2GError(f"datasets.{name}.root: folder {root} does not exist; set it to the folder "
                       f"holding JPEGImages/ and SegmentationClassAug/")
    check_inits(name, dataset)
    names = score_names(CAM_MODELS, subset=True) if run else scored_stages(dataset)
    check_expectations(f"datasets.{name}.expect", dataset.get("expect") or {}, names)
    runs = l2g_runs(dataset)
    for key, l2g in runs.items():
        if l2g["crop_size"] > l2g["input_size"]:
            raise L2GError(f"datasets.{name}.{key}.crop_size: {l2g['crop_size']} is larger than "
                           f"input_size {l2g['input_size']}; crops are cut from the input")
        if l2g.get("crop_layout", "corners") == "corners" and l2g["num_crops"] < 4:
            raise L2GError(f"datasets.{name}.{key}.num_crops: {l2g['num_crops']} is fewer than the 4 corner "
                           f"crops of crop_layout corners (the default); set 4 or more, or crop_layout random")
        if not l2g.get("use_saliency", True) and l2g.get("background") == "saliency":
            raise L2GError(f"datasets.{name}.{key}.background: saliency needs use_saliency; "
                           f"set background to complement, threshold or channel")
    refine = dataset["refine"]
    if refine.get("fill_band") and not (refine.get("ignore_band") and refine.get("crf", True)):
        raise L2GError(f"datasets.{name}.refine.fill_band: needs an ignore_band and crf: true (the CRF fills the band)")
    if refine.get("background") == "saliency" and refine.get("threshold") is None and not refine.get("ignore_band"):
        raise L2GError(f"datasets.{name}.refine: background saliency needs a saliency threshold or an "
                       f"ignore_band (the CAM stage's best threshold is a CAM threshold)")
    budgets = {"train_cls": dataset["train_cls"], **runs, "train_seg": dataset["train_seg"]}
    for key, options in budgets.items():
        if ("epochs" in options) == ("iterations" in options):
            raise L2GError(f"datasets.{name}.{key}: give the training budget as epochs or iterations, one of them")
    check_global_batches(name, dataset)


# The training rules and the config section each takes its batch size from (the control trains
# as L2G does).
BATCH_SECTIONS = {"train_cls": "train_cls", "train_l2g": "train_l2g", "train_control": "train_l2g",
                  "train_seg": "train_seg"}


def check_global_batches(name, dataset):
    """batch_size is the global batch: a training job on N GPUs runs N DDP processes of
    batch_size / N images each, so N must divide it."""
    gpus = dataset["jobs"]["gpu"]
    for rule, section in BATCH_SECTIONS.items():
        count, batch = gpus.get(rule, gpus["default"]), dataset[section]["batch_size"]
        if count > 1 and batch % count:
            raise L2GError(f"datasets.{name}.{section}.batch_size: {batch} (the global batch) does not split "
                           f"over the {count} GPUs of jobs.gpu.{rule}; give a multiple of {count}")


def check_inits(name, dataset):
    """A real backbone on a real dataset needs its init written out: null would silently train it
    from random weights (scratch asks for that); only DeepLab can start from a classifier of the run
    (stage1, l2g), which stage 1 precedes; DeepLab for COCO must not start from COCO masks."""
    if (init := dataset["train_cls"].get("init")) in SEG_INIT_MODELS:
        raise L2GError(f"datasets.{name}.train_cls.init: {init} names a classifier this run trains after "
                       f"stage 1; it is a train_seg init (stage 2 starts from stage 1 with train_l2g.start)")
    if dataset["kind"] != "synthetic":
        for key in ("train_cls", "train_seg"):
            section = dataset[key]
            if section["backbone"] != "small" and section.get("init") is None:
                raise L2GError(f"datasets.{name}.{key}.init: null would train {section['backbone']} from random "
                               f"weights; set the pretrained weights file (README, PASCAL VOC) or scratch")
    from l2g_core.models.deeplab import refuse_coco_trained

    try:
        refuse_coco_trained(dataset["train_seg"].get("init"), dataset["kind"])
    except L2GError as error:
        raise L2GError(f"datasets.{name}.train_seg.init: {error}") from None


def require_root(config, name):
    """The root of a real dataset, or an error saying how to set it (used when it is targeted)."""
    root = config["datasets"][name].get("root")
    if root is None:
        raise L2GError(f"datasets.{name}.root is not set; point it at your copy in config/config.yaml "
                       f"or with --config 'datasets={{{name}: {{root: /path/to/data}}}}'")
    return root
