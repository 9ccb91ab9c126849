"""The run report: the plotting functions on small inputs, `l2g plot-report` on a tiny finished
run, and `snakemake --report` over its figures."""

import json

import numpy as np
import pytest
from conftest import run_snakemake
from PIL import Image

from l2g_core import plots
from l2g_core.cli import main
from l2g_core.io_utils import voc_palette
from l2g_core.stages.plot_report import FIGURES, choose_ids, stage_times

CLASSES = ["background", "owl", "fox"]


def png(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def expected_size(size_inches):
    width, height = size_inches
    return round(width * plots.DPI), round(height * plots.DPI)


def assert_drawn(pixels, least_colours=20):
    """Not a blank page: many colours, and plenty of non-white pixels."""
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) >= least_colours
    assert (pixels.min(axis=2) < 200).mean() > 0.02


def has_colour(pixels, rgb, least=50):
    return int((np.abs(pixels.astype(int) - rgb).sum(axis=2) == 0).sum()) >= least


# --- the plotting functions ----------------------------------------------------------------------


def test_iou_bars_draws_every_stage_at_its_size(tmp_path):
    stages = [{"label": "plain CAMs", "note": "train", "miou": 0.4,
               "per_class_iou": {"background": 0.8, "owl": 0.3, "fox": 0.1}},
              {"label": "DeepLab", "miou": 0.6, "per_class_iou": {"background": 0.9, "owl": 0.5, "fox": None}}]
    path = tmp_path / "iou.png"
    plots.iou_bars(path, stages, CLASSES)
    pixels = png(path)
    assert pixels.shape[1::-1] == expected_size(plots.iou_figure_size(3, 2))
    assert_drawn(pixels)
    for colour in plots.COLOURS[:2]:  # one bar colour per stage
        assert has_colour(pixels, [int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary name


def test_sample_grid_shows_label_maps_in_the_voc_palette(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    labels = np.zeros((24, 32), dtype=np.uint8)
    labels[4:20, 4:16], labels[4:20, 18:30], labels[0, :] = 1, 2, 255
    cams = np.stack([np.linspace(0, 1, 32)[None].repeat(24, 0)] * 2).astype(np.float32)
    overlay = plots.cam_overlay(image, cams)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    rows = [("img_1\nowl, fox", [image, labels, overlay]), ("img_2", [image, labels, overlay])]
    path = tmp_path / "grid.png"
    plots.sample_grid(path, rows, ["image", "ground truth", "CAM"], CLASSES)
    pixels = png(path)
    assert pixels.shape[1::-1] == expected_size(plots.grid_figure_size(2, 3))
    assert_drawn(pixels)
    palette = voc_palette()
    for index in (1, 2, 255):  # owl, fox and ignore, in the panels and the legend
        assert has_colour(pixels, palette[index])
    with pytest.raises(ValueError, match="panels"):
        plots.sample_grid(tmp_path / "bad.png", [("x", [image])], ["image", "ground truth"], CLASSES)


def test_loss_curves_draw_a_panel_per_model_and_the_rates(tmp_path):
    updates = list(range(10, 110, 10))
    logs = {"cls": {"epoch": [1] * 10, "update": updates, "lr": [0.1 - 0.01 * i for i in range(10)],
                    "loss": [1 / (i + 1) for i in range(10)]},
            "l2g": {"epoch": [1] * 10, "update": updates, "lr": [0.01] * 10, "loss": [2.0 - 0.1 * i for i in range(10)],
                    "kd": [1.0 - 0.05 * i for i in range(10)], "cls_local": [0.5] * 10}}
    path = tmp_path / "losses.png"
    plots.loss_curves(path, logs, {"cls": "stage 1"})
    pixels = png(path)
    assert pixels.shape[1::-1] == expected_size(plots.loss_figure_size(2))
    assert_drawn(pixels)


def test_run_times_draw_one_bar_per_stage(tmp_path):
    path = tmp_path / "times.png"
    plots.run_times(path, {"train_cls": 120.0, "export_cams (2 shards)": 61.5, "refine": 3.0})
    pixels = png(path)
    assert pixels.shape[1::-1] == expected_size(plots.times_figure_size(3))
    assert_drawn(pixels, least_colours=10)
    assert has_colour(pixels, [0x42, 0x92, 0xC6], least=500)  # the bars
    assert plots.duration_text(3.04) == "3.0 s" and plots.duration_text(61.5) == "1 min 02 s"
    assert plots.duration_text(7325) == "2 h 02 min"


# --- the data the command reads ------------------------------------------------------------------


def write_benchmark(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("s\th:m:s\tmax_rss\n" + f"{seconds}\t0:00:01\t10.0\n")


def test_stage_times_sum_the_shards_in_pipeline_order(tmp_path):
    for name, seconds in (("score_seg", 2), ("export_cams-1-of-2", 10.5), ("export_cams-2-of-2", 11),
                          ("train_cls", 100), ("gather_seg/pred", 0.5), ("report", 9), ("prepare", 1)):
        write_benchmark(tmp_path / f"{name}.tsv", seconds)
    times = stage_times(tmp_path)
    assert times == {"prepare": 1.0, "train_cls": 100.0, "export_cams (2 shards)": 21.5, "gather_seg/pred": 0.5,
                     "score_seg": 2.0}
    assert list(times) == ["prepare", "train_cls", "export_cams (2 shards)", "gather_seg/pred", "score_seg"]


def test_choose_ids_prefers_images_that_show_new_classes():
    labels = {"a": [1], "b": [1], "c": [1, 2], "d": [3], "e": [2]}
    assert choose_ids(list(labels), labels, 3) == ["a", "c", "d"]
    assert choose_ids(list(labels), labels, 4) == ["a", "b", "c", "d"]


def test_plot_report_on_an_unfinished_run_is_one_line(tmp_path, capsys):
    assert main(["plot-report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    manifest = tmp_path / "data" / "manifest.json"
    assert err == [f"l2g plot-report: error: {manifest}: manifest not found (run the prepare stage first)"]


# --- on a tiny finished run ----------------------------------------------------------------------

REPORT = [f"results/demo/report/{name}" for name in FIGURES]


@pytest.fixture
def reported(finished_demo):
    return finished_demo


def test_the_report_rule_writes_the_four_figures(reported):
    sizes = {"iou_per_class.png": plots.iou_figure_size(7, 7), "samples.png": plots.grid_figure_size(4, 6),
             "loss_curves.png": plots.loss_figure_size(5), "run_times.png": None}
    for name, size in sizes.items():
        pixels = png(reported / "results/demo/report" / name)
        if size is not None:
            assert pixels.shape[1::-1] == expected_size(size), name
        assert_drawn(pixels)
    log = (reported / "results/demo/logs/report.log").read_text()
    assert "plot-report:" in log and "grid: val_" in log
    assert (reported / "results/demo/benchmarks/report.tsv").is_file()


def test_the_report_computes_cams_and_pseudo_labels_as_the_pipeline_does(reported):
    """On a train image, the report's CAM and pseudo label equal the pipeline's files."""
    from l2g_core.cam_io import load_cams
    from l2g_core.data.layout import VOCLayout
    from l2g_core.stages.plot_report import pseudo_label, report_cams

    results = reported / "results/demo"
    manifest = json.loads((results / "data/manifest.json").read_text())
    labels = json.loads((results / "data/labels.json").read_text())
    layout = VOCLayout(manifest["root"])
    image_id = (results / "data/train.txt").read_text().split()[0]
    export = json.loads((results / "cams/manifest.json").read_text())["settings"]
    refine = json.loads((results / "pseudo_labels/manifest.json").read_text())["settings"]
    cams, classes = report_cams(results / "l2g/model.pt", layout, [image_id], labels, manifest["class_names"],
                                export, "cpu")[image_id]
    stored, stored_classes = load_cams(results / "cams" / f"{image_id}.npz")
    assert classes.tolist() == stored_classes.tolist()
    np.testing.assert_allclose(cams, stored, atol=2e-3)
    saliency = layout.load_saliency(image_id) if refine["background"] == "saliency" else None
    made = pseudo_label(layout.load_image(image_id), cams, classes, refine, saliency)
    with Image.open(results / "pseudo_labels" / f"{image_id}.png") as image:
        pipeline = np.asarray(image)
    assert (made == pipeline).mean() > 0.99


def test_snakemake_report_gathers_the_captioned_figures(reported):
    run_snakemake(reported, "--report", "report.html")
    html = (reported / "report.html").read_text()
    for name in FIGURES:
        assert f"results/demo/report/{name}" in html
    for caption in ("Per-class IoU (%) of each stage of the <strong>demo</strong> run",
                    "computed for the report", "the way the pipeline makes", "Training losses of the",
                    "benchmark files Snakemake writes", "L2G weakly supervised semantic segmentation, run end to end"):
        assert caption in html, caption
    for category in ("1. Scores", "2. Examples", "3. Training", "4. Run times"):
        assert category in html
    # nothing left to do: the figures are up to date
    again = run_snakemake(reported, "-n", "--cores", "2", *REPORT)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_expectation_table_colours_each_verdict(tmp_path):
    from l2g_core.expectations import judge

    values = {"cams": 0.52, "control_cams": 0.46, "seg": 0.7}
    verdicts = [judge({"stage": "cams", "minus": "control_cams", "min": 0.05, "hint": "the control " * 12}, values),
                judge({"stage": "seg", "min": 0.8, "hint": "the labels"}, values),
                judge({"stage": "seg", "divided_by": "supervised", "min": 0.88, "hint": "x"}, values)]
    path = tmp_path / "expectations.png"
    plots.expectation_table(path, verdicts, title="Expectations of demo")
    pixels = png(path)
    assert pixels.shape[1::-1] == expected_size(plots.expectation_figure_size(plots.expectation_rows(verdicts)))
    for colour in plots.VERDICT_COLOURS.values():  # holds, fails, not measured
        assert has_colour(pixels, [int(colour[i:i + 2], 16) for i in (1, 3, 5)], least=500)
    plots.expectation_table(tmp_path / "none.png", [])  # no expectations declared: says so
    assert (png(tmp_path / "none.png").min(axis=2) < 200).any()
