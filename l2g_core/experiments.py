"""Experiments: sweeps of a dataset's recipe over settings and seeds, each run its own dataset.

A config section `experiments: {NAME: {variants, seeds, seed_sections, score}}` describes sweeps
that apply to any dataset. Each (variant, seed) is a run named
`{dataset}/experiments/{NAME}/{run}`: a dataset whose settings are the base dataset's with the
variant's keys and the seed on top, so every rule of the workflow makes its outputs under
results/{dataset}/experiments/{NAME}/{run}/. A run reads an upstream output from the base dataset
wherever the two would make it the same way (l2g_core.pipeline.made_with): a sweep of stage 2
trains stage 1 once.
"""

from l2g_core.config import check_settings, deep_merge, written_at
from l2g_core.errors import L2GError

MARK = "/experiments/"
# The sections whose `seed` a sweep's seeds set, unless it names others (seed_sections).
SEED_SECTIONS = ("train_cls", "train_l2g", "train_seg")


def run_names(experiment):
    """{run: (variant, seed)}: every variant with every seed (variant None: the recipe as it is;
    seed None: the recipe's seeds)."""
    variants = list(experiment.get("variants") or {}) or [None]
    seeds = experiment.get("seeds") or [None]
    runs = {}
    for variant in variants:
        for seed in seeds:
            parts = [variant] if variant is not None else []
            parts += [f"seed{seed}"] if seed is not None else []
            runs["-".join(parts) or "recipe"] = (variant, seed)
    return runs


def run_overrides(experiment, variant, seed):
    """The keys a run sets on top of its dataset: the variant's, then the seed of each seed section."""
    overrides = dict((experiment.get("variants") or {}).get(variant) or {})
    if seed is not None:
        for section in experiment.get("seed_sections") or SEED_SECTIONS:
            overrides = deep_merge(overrides, {section: {"seed": seed}})
    return overrides


def split_run(name):
    """'demo/experiments/seeds/seed1' -> ('demo', 'seeds', 'seed1'); a dataset's own name ->
    (name, None, None)."""
    base, mark, rest = name.partition(MARK)
    if not mark:
        return name, None, None
    experiment, _, run = rest.partition("/")
    return base, experiment, run


def all_runs(config):
    """{experiment: {run: (variant, seed)}} of the config's experiments section."""
    return {name: run_names(experiment) for name, experiment in (config.get("experiments") or {}).items()}


def run_settings(config, datasets, name):
    """The settings of run `name` ('demo/experiments/seeds/seed1'): its dataset's (`datasets`, recipes
    resolved and checked) with the run's keys on top, checked like a dataset's; a mistake is named
    where it was written. A run the config does not describe is one line."""
    base, experiment, run = split_run(name)
    runs = all_runs(config).get(experiment, {})
    if base not in datasets or run not in runs:
        raise L2GError(f"{name}: not a run of this config (experiments.{experiment} has runs "
                       f"{', '.join(runs) or 'none'})")
    variant, seed = runs[run]
    overrides = run_overrides(config["experiments"][experiment], variant, seed)
    where = f"experiments.{experiment}" + (f".variants.{variant}" if variant is not None else "")

    def written(path):
        return [where, *path] if _holds(overrides, path) else written_at(config, ["datasets", base, *path])

    return check_settings(name, deep_merge(datasets[base], overrides), written)


def _holds(tree, path):
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True
