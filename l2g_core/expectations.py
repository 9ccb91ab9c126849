"""Expected numbers: what a run's scores should be (config `expect:`), judged where they are known.

A dataset section, and an experiment, may say per scored stage what its score should be, in the
unit of the miou.json files: a fraction (0.721 is 72.1% mIoU). `expect: {STAGE: [EXPECTATION,
...]}`, STAGE a score's name (l2g_core.pipeline.scored_stages: cls_cams, control_cams, cams,
no_saliency_cams, pseudo_labels, seg, supervised; NAME_train_subset on splits.train_subset;
NAME_no_crf for the score before the CRF), each EXPECTATION one of

    {min: 0.649, max: 0.749}              a range of the stage's score (or one bound alone)
    {minus: control_cams, min: 0.05}      a margin: the stage's score minus another stage's
    {divided_by: supervised, min: 0.88}   a ratio: the stage's score over another stage's
    {statistic: std, max: 0.03}           an experiment's only: the spread (sample std) over its runs

with a `hint` (what to check when it fails) and, for a published figure, its `source`.

Where each is judged: a range by the stage's own scorer (l2g evaluate, score-pseudo-labels,
score-seg), into the `expectations` list of the file it writes, so a CAM range is judged before
any DeepLab hour; a margin or ratio by the final score-seg, which reads both scores and writes the
verdicts of the whole run to results/{dataset}/expectations.{md,json}; an experiment's on the means
over each variant's runs (and their std), in its summary. A failed expectation is a WARN line in
the job's log; with strict (config strict_expectations: true, handed to the jobs as
L2G_STRICT_EXPECTATIONS=1) it fails the job with one line naming the stage, the expectation and
the measured value.
"""

import argparse
import json
import os

from l2g_core.errors import L2GError

# How the workflow tells a scoring job that a failed expectation fails it (config
# strict_expectations). Not a rule parameter: strictness changes no output, so switching it reruns
# nothing.
STRICT_ENV = "L2G_STRICT_EXPECTATIONS"
# The name of a score before the CRF: NAME_no_crf is the miou_no_crf of NAME's file.
NO_CRF = "_no_crf"
VERDICT_WORDS = {True: "holds", False: "fails", None: "not measured"}


def strict_default():
    """Whether failed expectations fail the job, as the workflow set it (L2G_STRICT_EXPECTATIONS=1)."""
    return os.environ.get(STRICT_ENV) == "1"


def add_options(parser, name_help=None):
    """The options every scoring command shares: --name (unless name_help is None), --expect,
    --strict-expectations."""
    if name_help is not None:
        parser.add_argument("--name", help=f"this score's name in expectations and verdicts ({name_help})")
    parser.add_argument("--expect", default="[]", metavar="JSON",
                        help="expectations to judge: a JSON list of {stage, min, max, minus, divided_by, hint, "
                             "source} (the workflow passes the config's expect: for this score)")
    parser.add_argument("--strict-expectations", action=argparse.BooleanOptionalAction, default=strict_default(),
                        help=f"a failed expectation fails the command (default: ${STRICT_ENV} == 1)")


def parse_entries(text, option="--expect"):
    """The JSON list of expectations a command was given; one line on a mistake."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise L2GError(f"{option}: not valid JSON ({error.msg})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "stage" in e for e in entries):
        raise L2GError(f"{option}: expected a JSON list of expectations, each with its stage")
    return entries


def other_stage(entry):
    """The stage a margin or ratio compares with (None for a range)."""
    return entry.get("minus", entry.get("divided_by"))


def named_stages(expect):
    """Every stage an `expect:` section names: its keys and the stages its margins compare with."""
    names = list(expect)
    names += [other_stage(entry) for entries in expect.values() for entry in entries or [] if other_stage(entry)]
    return list(dict.fromkeys(names))


def entries(expect):
    """[{stage, ...}] of every expectation of an `expect:` section."""
    return [{"stage": stage, **entry} for stage, items in expect.items() for entry in items or []]


def ranges(expect, names):
    """[{stage, ...}] of the expectations on the stages `names` that need no other stage's score."""
    return [{"stage": stage, **entry} for stage in names for entry in expect.get(stage) or []
            if other_stage(entry) is None]


def margins(expect):
    """[{stage, ...}] of the expectations that compare two stages (judged where both are known)."""
    return [{"stage": stage, **entry} for stage, entries in expect.items() for entry in entries or []
            if other_stage(entry) is not None]


def text(entry):
    """An expectation as a line: '0.649 <= cams <= 0.749', 'cams - control_cams >= 0.05',
    'seg / supervised >= 0.88', 'std(seg) <= 0.03'."""
    stage = entry["stage"]
    if entry.get("statistic") == "std":
        term = f"std({stage})"
    elif "minus" in entry:
        term = f"{stage} - {entry['minus']}"
    elif "divided_by" in entry:
        term = f"{stage} / {entry['divided_by']}"
    else:
        term = stage
    low, high = entry.get("min"), entry.get("max")
    if low is not None and high is not None:
        return f"{low:g} <= {term} <= {high:g}"
    return f"{term} >= {low:g}" if low is not None else f"{term} <= {high:g}"


def scores_of(name, metrics):
    """{NAME: miou, NAME_no_crf: miou_no_crf (where the file holds it)} of one score file."""
    scores = {name: metrics.get("miou")}
    if "miou_no_crf" in metrics:
        scores[f"{name}{NO_CRF}"] = metrics["miou_no_crf"]
    return scores


def judge(entry, values, stds=None):
    """The verdict of one expectation on `values` ({stage: score}; for statistic std, `stds`
    {stage: std}): {stage, expectation, measured, holds, values, hint, source}; holds is None (not
    measured) where a score is missing or a ratio's divisor is 0."""
    stage, other = entry["stage"], other_stage(entry)
    source = stds if entry.get("statistic") == "std" else values
    used = {name: (source or {}).get(name) for name in (stage, other) if name is not None}
    measured = None
    if None not in used.values():
        if "minus" in entry:
            measured = used[stage] - used[other]
        elif "divided_by" in entry:
            measured = used[stage] / used[other] if used[other] else None
        else:
            measured = used[stage]
    holds = None
    if measured is not None:
        measured = round(measured, 9)  # 0.93 - 0.88 is 0.05, not 0.04999...
        holds = (entry.get("min") is None or measured >= entry["min"]) and \
            (entry.get("max") is None or measured <= entry["max"])
    return {"stage": stage, "expectation": text(entry), "measured": measured, "holds": holds, "values": used,
            "hint": " ".join(str(entry.get("hint") or "").split()) or None, "source": entry.get("source")}


def judge_all(entries, values, stds=None):
    return [judge(entry, values, stds) for entry in entries]


def judge_own(args, metrics, values=None):
    """The verdicts of a scoring command's --expect on its own scores (`metrics`, under --name) and
    `values` ({stage: score}) of the other scores it read."""
    entries = parse_entries(args.expect)
    if entries and not args.name:
        raise L2GError("--expect needs --name (this score's name in the expectations)")
    own = scores_of(args.name, metrics) if args.name else {}
    return judge_all(entries, {**(values or {}), **own})


def measured_text(verdict):
    """'0.0123 (cams 0.4680, control_cams 0.4557)': the measured value, and the scores behind a margin."""
    if verdict["measured"] is None:
        known = ", ".join(f"{name} {'missing' if v is None else f'{v:.4f}'}" for name, v in verdict["values"].items())
        return f"not measured ({known})"
    shown = f"{verdict['measured']:.4f}"
    if len(verdict["values"]) > 1:
        shown += " (" + ", ".join(f"{name} {value:.4f}" for name, value in verdict["values"].items()) + ")"
    return shown


def line(verdict):
    """One log line: 'expectation holds: ...' or 'WARN expectation fails: ...; check: HINT'."""
    word = VERDICT_WORDS[verdict["holds"]]
    head = "expectation holds" if verdict["holds"] else f"WARN expectation {word}"
    hint = f"; check: {verdict['hint']}" if verdict["hint"] and not verdict["holds"] else ""
    return f"{head}: {verdict['stage']}: {verdict['expectation']}: measured {measured_text(verdict)}{hint}"


def report(verdicts, strict, prefix=""):
    """Print each verdict's line; with `strict`, a failed one is an L2GError (enforce)."""
    for verdict in verdicts:
        print(prefix + line(verdict))
    enforce(verdicts, strict, prefix)


def enforce(verdicts, strict, prefix=""):
    """With `strict`, the first failed verdict as an L2GError: one line naming the stage, the
    expectation, the measured value and the hint."""
    failed = [verdict for verdict in verdicts if verdict["holds"] is False]
    if strict and failed:
        verdict = failed[0]
        hint = f"; check: {verdict['hint']}" if verdict["hint"] else ""
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise L2GError(f"expectation failed{more}: {prefix}{verdict['stage']}: {verdict['expectation']}: "
                       f"measured {measured_text(verdict)}{hint} (strict_expectations)")


def counts(verdicts):
    """{holds, fails, not_measured}: how many verdicts of each kind."""
    return {key: sum(verdict["holds"] is value for verdict in verdicts)
            for key, value in (("holds", True), ("fails", False), ("not_measured", None))}


def summary_text(verdicts):
    """'2 hold, 1 fails, 0 not measured'."""
    n = counts(verdicts)
    return f"{n['holds']} hold, {n['fails']} fail, {n['not_measured']} not measured"


def markdown_table(verdicts, first=()):
    """The verdicts as a Markdown table; `first` (name, key) columns come before the stage."""
    head = [name for name, _ in first] + ["stage", "expectation", "measured", "verdict", "what to check",
                                          "source"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for verdict in verdicts:
        word = VERDICT_WORDS[verdict["holds"]]
        cells = [str(verdict[key]) for _, key in first] + [
            verdict["stage"], f"`{verdict['expectation']}`", measured_text(verdict),
            word if verdict["holds"] else f"**{word}**", verdict["hint"] or "", verdict["source"] or ""]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


UNIT = "Scores are fractions, as the miou.json files hold them (0.721 is 72.1% mIoU)."


def run_table(name, verdicts):
    """A run's verdict table (results/{dataset}/expectations.md)."""
    if not verdicts:
        return f"# Expectations of {name}\n\nNo expectations declared (config datasets.{name}.expect).\n"
    return (f"# Expectations of {name}\n\n{UNIT} {summary_text(verdicts)}.\n\n" + markdown_table(verdicts))
