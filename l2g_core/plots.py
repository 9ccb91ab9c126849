"""The figures of the run report (`l2g plot-report`, `snakemake --report`), one function each.

Every function takes plain data (dicts, lists, numpy arrays) and a path, draws one figure with
matplotlib's Agg backend (no screen needed) and writes it as a PNG atomically. Sizes are fixed
inches at DPI dots per inch, so the pixel size of a figure depends only on the shape of its data.

    iou_bars      per-class IoU of each stage, grouped by class, mIoU in the legend
    sample_grid   rows of panels (RGB images or label maps in the VOC palette), class legend below
    cam_overlay   one image's CAMs as a heat map over it (a grid panel)
    loss_curves   training losses against updates, one panel per model
    run_times     seconds per stage, a horizontal bar chart
    experiment_summary  an experiment's mIoU per stage and variant, mean ± std and every run
    expectation_table   a run's expectations: each one, its measured value, its verdict and hint
"""

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no screen needed

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from l2g_core.io_utils import atomic_path, voc_palette

DPI = 100
IGNORE_INDEX = 255
# Large type for the figure size: the report shows a figure scaled to its page, often at 2/3 size.
STYLE = {"font.size": 14, "axes.titlesize": 15, "axes.labelsize": 14, "xtick.labelsize": 13,
         "ytick.labelsize": 13, "legend.fontsize": 13, "figure.titlesize": 17,
         "axes.spines.top": False, "axes.spines.right": False}
# Stage colours: the weakly supervised chain in blues/greens/orange, the supervised reference grey.
COLOURS = ("#9ecae1", "#6baed6", "#2171b5", "#41ab5d", "#f16913", "#737373")


def _save(fig, path):
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _figure(width, height, **kwargs):
    return plt.figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


# --- per-class IoU -------------------------------------------------------------------------------


def iou_figure_size(num_classes, num_stages):
    """(width, height) in inches: about 0.18 inch per bar, at least 12.5 x 6.5."""
    return max(12.5, min(40.0, 2.0 + num_classes * (num_stages * 0.18 + 0.3))), 6.5


def iou_bars(path, stages, class_names, title="Per-class IoU of each stage"):
    """Grouped bars of per-class IoU (in percent), one group per class, one bar per stage.

    stages       [{"label": str, "per_class_iou": {class name: IoU in [0, 1]}, "miou": float,
                 "note": optional text after the mIoU in the legend (e.g. the split),
                 "colour": optional bar colour (default: the k-th of COLOURS)}, ...] in the
                 order to draw; a class a stage does not score (absent or None) has no bar
    class_names  the groups, in order (background first)
    """
    width, height = iou_figure_size(len(class_names), len(stages))
    with plt.rc_context(STYLE):
        fig = _figure(width, height)
        ax = fig.add_subplot()
        x = np.arange(len(class_names))
        bar = 0.8 / max(1, len(stages))
        for k, stage in enumerate(stages):
            scored = [stage["per_class_iou"].get(name) for name in class_names]
            values = [np.nan if v is None else 100.0 * v for v in scored]
            ax.bar(x + (k - (len(stages) - 1) / 2) * bar, values, bar * 0.92,
                   color=stage.get("colour", COLOURS[k % len(COLOURS)]), edgecolor="white", linewidth=0.5,
                   label=f"{stage['label']}: mIoU {100.0 * stage['miou']:.1f}"
                         + (f" ({stage['note']})" if stage.get("note") else ""))
        ax.set_xticks(x, class_names, rotation=30 if len(class_names) > 12 else 0,
                      ha="right" if len(class_names) > 12 else "center")
        ax.set_xlim(-0.6, len(class_names) - 0.4)
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU (%)")
        ax.set_title(title)
        ax.yaxis.grid(True, color="#dddddd")
        ax.set_axisbelow(True)
        # below the axes, inside the figure (constrained layout makes room), two stages a row
        fig.legend(loc="outside lower center", ncols=min(2, max(1, len(stages))), frameon=False)
        _save(fig, path)


# --- image grid ----------------------------------------------------------------------------------


def colour_labels(labels, palette=None):
    """H x W class indices -> H x W x 3 uint8 in the VOC palette (255, ignore, in its beige)."""
    palette = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    return palette[np.asarray(labels, dtype=np.uint8)]


def cam_overlay(image, cams, weight=0.6, colormap="jet"):
    """The CAMs (K, H, W) in [0, 1] of one image as a heat map over it, the way CAM papers show
    them: at each pixel the strongest CAM (0 blue .. 1 red), blended with the image."""
    image = np.asarray(image, dtype=np.float32)
    cams = np.clip(np.asarray(cams, dtype=np.float32), 0.0, 1.0)
    strongest = cams.max(axis=0) if len(cams) else np.zeros(image.shape[:2], dtype=np.float32)
    heat = matplotlib.colormaps[colormap](strongest)[..., :3] * 255.0
    return np.clip(image * (1 - weight) + heat * weight + 0.5, 0, 255).astype(np.uint8)


def grid_figure_size(num_rows, num_columns):
    return 0.8 + 2.1 * num_columns, 2.0 + 2.2 * num_rows


def sample_grid(path, rows, column_titles, class_names, title="Val images through the pipeline"):
    """A grid of panels: one row per image, one column per stage, a legend of the classes below.

    rows           [(row title, [panel, ...]), ...]; a panel is an H x W x 3 uint8 RGB image, or an
                   H x W array of class indices drawn in the VOC palette
    column_titles  one per panel of a row
    class_names    label names, background first; the legend shows these and "ignore" (255)
    """
    palette = voc_palette()
    width, height = grid_figure_size(len(rows), len(column_titles))
    with plt.rc_context(STYLE):
        fig = _figure(width, height)
        axes = fig.subplots(len(rows), len(column_titles), squeeze=False)
        for r, (row_title, panels) in enumerate(rows):
            if len(panels) != len(column_titles):
                raise ValueError(f"row {row_title!r} has {len(panels)} panels for {len(column_titles)} columns")
            for c, panel in enumerate(panels):
                ax = axes[r, c]
                panel = np.asarray(panel)
                ax.imshow(panel if panel.ndim == 3 else colour_labels(panel, palette), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if r == 0:
                    ax.set_title(column_titles[c], fontsize=15)
                if c == 0:
                    ax.set_ylabel(row_title, fontsize=14)
        handles = [Patch(facecolor=palette[i] / 255.0, edgecolor="#555555", label=name)
                   for i, name in enumerate(class_names)]
        handles.append(Patch(facecolor=palette[IGNORE_INDEX] / 255.0, edgecolor="#555555", label="ignore"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), frameon=False,
                   fontsize=15)
        fig.suptitle(title)
        _save(fig, path)


# --- training losses -----------------------------------------------------------------------------

NOT_LOSSES = ("epoch", "update", "lr")


def _panel_grid(count):
    columns = min(3, max(1, count))
    return -(-max(1, count) // columns), columns


def loss_figure_size(num_models):
    """(width, height) in inches of `loss_curves`: a panel per model and one for the rates."""
    rows, columns = _panel_grid(num_models + 1)
    return 4.3 * columns + 0.4, 3.4 * rows + 0.7


def loss_curves(path, logs, titles=None, title="Training losses"):
    """One panel per model: each loss column of its train_log.csv against the update count; a
    last panel with every model's learning rate.

    logs    {model name: {"update": [...], "loss": [...], "lr": [...], other loss columns: [...]}};
            epoch, update and lr are not losses, every other column is a curve ("loss", the total,
            solid black)
    titles  {model name: panel title} (default: the name)
    """
    titles = titles or {}
    width, height = loss_figure_size(len(logs))
    rows, columns = _panel_grid(len(logs) + 1)
    with plt.rc_context(STYLE):
        fig = _figure(width, height)
        axes = fig.subplots(rows, columns, squeeze=False).ravel()
        for ax, (model, log) in zip(axes, logs.items()):
            name = titles.get(model, model)
            updates = np.asarray(log["update"], dtype=float)
            for key, values in log.items():
                if key in NOT_LOSSES:
                    continue
                total = key == "loss"
                ax.plot(updates, np.asarray(values, dtype=float), label="total loss" if total else key,
                        linewidth=2.0 if total else 1.4, linestyle="-" if total else "--",
                        color="black" if total else None, marker="o" if len(updates) < 5 else None)
            ax.set_title(name)
            ax.set_xlabel("update")
            ax.set_ylabel("loss")
            ax.yaxis.grid(True, color="#dddddd")
            if len([key for key in log if key not in NOT_LOSSES]) > 1:
                # room above the curves for the legend
                ax.set_ylim(0, 1.45 * max(max(v, default=0) for k, v in log.items() if k not in NOT_LOSSES))
                ax.legend(frameon=False, ncols=2, loc="upper right", fontsize=12)
            else:
                ax.set_ylim(bottom=0)
        rates = axes[len(logs)]
        for k, (model, log) in enumerate(logs.items()):
            if "lr" in log:  # each line thinner than the one before, so equal schedules stay visible
                rates.plot(np.asarray(log["update"], dtype=float), np.asarray(log["lr"], dtype=float),
                           label=model, linewidth=max(1.2, 5.0 - 1.0 * k))
        rates.set_title("learning rate")
        rates.set_xlabel("update")
        rates.set_ylabel("learning rate")
        rates.set_ylim(bottom=0)
        rates.yaxis.grid(True, color="#dddddd")
        rates.legend(frameon=False)
        for ax in axes[len(logs) + 1:]:
            ax.set_visible(False)
        fig.suptitle(title)
        _save(fig, path)


# --- run times -----------------------------------------------------------------------------------


def duration_text(seconds):
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def times_figure_size(num_stages):
    return 11.0, 1.6 + 0.4 * max(1, num_stages)


def run_times(path, times, title="Run time of each stage"):
    """Horizontal bars of seconds per stage, top to bottom in the order of `times`.

    times  {stage label: seconds}; the title ends with their sum
    """
    labels, seconds = list(times), [float(v) for v in times.values()]
    width, height = times_figure_size(len(labels))
    with plt.rc_context(STYLE):
        fig = _figure(width, height)
        ax = fig.add_subplot()
        y = np.arange(len(labels))
        ax.barh(y, seconds, color="#4292c6", height=0.7)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        peak = max(seconds, default=0.0) or 1.0
        ax.set_xlim(0, peak * 1.2)
        for yy, value in zip(y, seconds):
            ax.text(value + peak * 0.01, yy, duration_text(value), va="center", fontsize=13)
        ax.set_xlabel("seconds")
        ax.xaxis.grid(True, color="#dddddd")
        ax.set_axisbelow(True)
        ax.set_title(f"{title}: {duration_text(sum(seconds))} in all")
        _save(fig, path)


# --- experiments ---------------------------------------------------------------------------------


def experiment_summary(path, stages, variants, title="Experiment"):
    """mIoU (in percent) per stage: for each variant its mean (a diamond) with the standard deviation
    as an error bar, and each run's value as a dot beside it. The axis spans the values, not 0-100:
    the differences between variants are what the figure is for.

    stages    {stage label: {variant: {"mean", "std" (None for one run), "values"}}} in drawing order
    variants  the variant names, in legend order
    """
    width = max(8.0, min(40.0, 2.0 + len(stages) * (len(variants) * 0.45 + 0.6)))
    colours = plt.get_cmap("tab10").colors
    step = 0.7 / max(len(variants), 1)
    with plt.rc_context(STYLE):
        fig = _figure(width, 6.0)
        ax = fig.add_subplot()
        for k, variant in enumerate(variants):
            offset = (k - (len(variants) - 1) / 2) * step
            colour = colours[k % len(colours)]
            label = variant  # on the variant's first point only: one legend entry each
            for i, stat in enumerate(stage.get(variant) for stage in stages.values()):
                if not stat:
                    continue
                error = 100 * stat["std"] if stat["std"] is not None else None
                ax.errorbar(i + offset, 100 * stat["mean"], yerr=error, fmt="D", color=colour, markersize=7,
                            capsize=4, label=label)
                label = None
                ax.scatter([i + offset + step * 0.25] * len(stat["values"]), [100 * v for v in stat["values"]],
                           s=16, color=colour, alpha=0.6, zorder=3)
        ax.set_xticks(range(len(stages)), list(stages), rotation=30, ha="right")
        ax.set_xlim(-0.6, len(stages) - 0.4)
        ax.set_ylabel("mIoU (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(title)
        ax.legend(loc="best", fontsize=11)
        _save(fig, path)


# --- expectations --------------------------------------------------------------------------------

VERDICT_COLOURS = {True: "#c7e9c0", False: "#fcbba1", None: "#e0e0e0"}  # holds, fails, not measured


def expectation_rows(verdicts, width=60):
    """[[stage, expectation, measured, verdict, what to check], ...], long texts wrapped to `width`."""
    import textwrap

    from l2g_core.expectations import VERDICT_WORDS, measured_text

    return [[v["stage"], textwrap.fill(v["expectation"], 34), textwrap.fill(measured_text(v), 30),
             VERDICT_WORDS[v["holds"]], textwrap.fill(v["hint"] or "", width)] for v in verdicts]


def expectation_figure_size(rows):
    """(width, height) in inches: a line of 0.3 inch per line of text in the rows."""
    lines = sum(max(cell.count("\n") + 1 for cell in row) for row in rows)
    return 18.0, 1.4 + 0.3 * max(lines, 1) + 0.25 * len(rows)


def expectation_table(path, verdicts, title="Expectations"):
    """A table of a run's verdicts, one row each, coloured by verdict (holds green, fails red, not
    measured grey); verdicts as l2g_core.expectations.judge writes them (an empty list says so)."""
    rows = expectation_rows(verdicts)
    width, height = expectation_figure_size(rows)
    with plt.rc_context(STYLE):
        fig = _figure(width, height)
        ax = fig.add_subplot()
        ax.axis("off")
        if not rows:
            ax.text(0.5, 0.5, "no expectations declared (config expect:)", ha="center", va="center")
        else:
            heights = [max(cell.count("\n") + 1 for cell in row) for row in rows]
            table = ax.table(cellText=rows, colLabels=["stage", "expectation", "measured", "verdict", "what to check"],
                             colWidths=[0.13, 0.2, 0.18, 0.09, 0.4], loc="upper center", cellLoc="left")
            table.auto_set_font_size(False)
            table.set_fontsize(11)
            unit = 1.0 / (sum(heights) + len(rows) + 1)
            for (row, column), cell in table.get_celld().items():
                lines = 1 if row == 0 else heights[row - 1] + 1
                cell.set_height(unit * lines)
                if row > 0:
                    cell.set_facecolor(VERDICT_COLOURS[verdicts[row - 1]["holds"]])
                else:
                    cell.set_text_props(weight="bold")
        ax.set_title(title)
        _save(fig, path)
