"""decode: gpu, the input path that decodes and augments each batch on the training device
(l2g_core/data/gpu_augment.py): its operations against PIL's, and the whole path, run on the CPU
device, against the CPU path (LabelledImages with decode cpu) on the same images and seeds."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance

from l2g_core.data import gpu_augment
from l2g_core.data.augment import IMAGE_STATS, apply_jitter, apply_jitter_float, draw_jitter, shift_hue
from l2g_core.data.layout import IMAGE_DIR, SALIENCY_DIR
from l2g_core.data.torch_data import ImageOptions, LabelledImages
from l2g_core.errors import L2GError

from conftest import prepare_tiny_dataset

JITTER = (0.3, 0.3, 0.3, 0.1)  # the official strengths: every operation, hue included


def as_tensor(image):
    """PIL RGB (or L) -> 1 x C x H x W float32 of whole numbers, as gpu_augment holds images."""
    array = np.asarray(image, dtype=np.float32)
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def as_array(tensor):
    return tensor[0].permute(1, 2, 0).numpy().astype(np.int64)


@pytest.fixture(scope="module")
def photo():
    """A 45 x 31 RGB image with smooth parts, grey pixels, saturated ones and noise: the cases
    where PIL's roundings differ (hue of greys, clipping, halves)."""
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((45, 31), Image.BICUBIC))
    pixels = np.clip(smooth.astype(np.int64) + rng.integers(-30, 31, smooth.shape), 0, 255).astype(np.uint8)
    pixels[:3, :, :] = pixels[:3, :, :1]  # grey rows: no hue, no saturation
    pixels[3, :5] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]
    return Image.fromarray(pixels)


@pytest.mark.parametrize("name, enhancer", [("brightness", ImageEnhance.Brightness),
                                            ("contrast", ImageEnhance.Contrast),
                                            ("saturation", ImageEnhance.Color)])
def test_each_enhancer_is_pils_to_the_grey_level(photo, name, enhancer):
    factors = [0.7, 0.93, 1.0, 1.17, 1.3]
    batch = as_tensor(photo).repeat(len(factors), 1, 1, 1)
    out = gpu_augment.OPERATIONS[name](batch, torch.tensor(factors, dtype=torch.float64))
    for row, factor in enumerate(factors):  # one factor per sample, each its own blend
        assert np.array_equal(as_array(out[row:row + 1]), np.asarray(enhancer(photo).enhance(factor))), factor


def test_the_hue_shift_is_pils_hsv_round_trip(photo):
    shifts = [-0.1, -0.037, 0.0, 0.05, 0.1]
    batch = as_tensor(photo).repeat(len(shifts), 1, 1, 1)
    out = gpu_augment.hue(batch, torch.tensor(shifts, dtype=torch.float64))
    for row, shift in enumerate(shifts):  # even shift 0 is PIL's lossy RGB -> HSV -> RGB, not the identity
        assert np.array_equal(as_array(out[row:row + 1]), np.asarray(shift_hue(photo, shift))), shift
    assert not np.array_equal(as_array(out[2:3]), np.asarray(photo))


def test_the_hsv_conversion_is_pils_on_every_colour_class():
    # one pixel from each corner of the RGB cube's regions: each hue sector, greys, dark and light
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels[:4] = np.arange(256).reshape(4, 64, 1)  # every grey
    image = Image.fromarray(pixels)
    h, s, v = gpu_augment.rgb_to_hsv(as_tensor(image))
    assert np.array_equal(torch.stack([h[0], s[0], v[0]], -1).numpy(), np.asarray(image.convert("HSV")))
    rgb = gpu_augment.hsv_to_rgb(h, s, v)
    assert np.array_equal(as_array(rgb), np.asarray(image.convert("HSV").convert("RGB")))


def jitter_draws(count, seed=3):
    rng = np.random.default_rng(seed)
    return [draw_jitter(JITTER, rng) for _ in range(count)]


def test_the_official_jitter_applies_each_samples_own_order(photo):
    draws = jitter_draws(6)
    assert len({tuple(name for name, _ in ops) for ops in draws}) > 1  # the orders differ in the batch
    out = gpu_augment.jitter_official(as_tensor(photo).repeat(len(draws), 1, 1, 1), draws)
    for row, ops in enumerate(draws):
        assert np.array_equal(as_array(out[row:row + 1]), np.asarray(apply_jitter(photo, ops))), ops


def test_the_float_jitter_rounds_once(photo):
    draws = jitter_draws(4)
    out = gpu_augment.jitter_float(as_tensor(photo).repeat(len(draws), 1, 1, 1), draws)
    for row, ops in enumerate(draws):
        assert np.array_equal(as_array(out[row:row + 1]), np.asarray(apply_jitter_float(photo, ops))), ops


@pytest.mark.parametrize("size, resample, mode", [
    ((60, 40), Image.BICUBIC, "bicubic"),  # up, as VOC's short side to 512
    ((28, 28), Image.BILINEAR, "bilinear"),  # down, as a warp: horizontal pass first
    ((40, 9), Image.BICUBIC, "bicubic"),  # the height shrinks much more: Pillow 13 starts vertically
    ((45, 20), Image.BILINEAR, "bilinear"),  # one pass only
])
def test_resizing_is_pils_to_the_bit(photo, size, resample, mode):
    out = as_array(gpu_augment.resize(as_tensor(photo), size[::-1], mode))
    assert np.array_equal(out, np.asarray(photo.resize(size, resample)))


@pytest.mark.parametrize("box, size", [(None, (60, 40)), (None, (28, 28)), (None, (91, 17)),
                                       ((0, 0, 20, 22), (34, 31))])  # where (k + 0.5) * step misses PIL
def test_nearest_resizing_reads_pils_source_pixels(photo, box, size):
    grey = photo.convert("L").crop(box or (0, 0, *photo.size))
    out = as_array(gpu_augment.resize_nearest(as_tensor(grey), size[::-1]))[..., 0]
    assert np.array_equal(out, np.asarray(grey.resize(size, Image.NEAREST)))


def test_a_crop_past_the_image_is_black_as_pils(photo):
    box = (30, 20, 50, 40)  # 15 columns and 11 rows inside
    out = as_array(gpu_augment.crop(as_tensor(photo), box))
    assert np.array_equal(out, np.asarray(photo.crop(box)))
    assert out[11:].max() == 0 and out[:, 15:].max() == 0


def test_normalise_is_the_cpu_paths(photo):
    from l2g_core.data.augment import normalise

    for stats in IMAGE_STATS:
        out = gpu_augment.normalise(as_tensor(photo), stats)[0].numpy()
        assert np.array_equal(out, normalise(np.asarray(photo), stats))


# --- the whole path against the CPU path -----------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A tiny synthetic dataset whose first images are made non-square (landscape, portrait: the
    official crop box then runs past the image) and one a PNG named .jpg (decoded by the worker)."""
    path = prepare_tiny_dataset(tmp_path_factory.mktemp("gpu_augment"), train=6, val=2, size=64)
    manifest = yaml.safe_load(path.read_text())
    root = manifest["root"]
    ids = sorted(p.stem for p in (Path(root) / IMAGE_DIR).glob("train_*.jpg"))
    for image_id, size, fmt in [(ids[0], (96, 64), "JPEG"), (ids[1], (60, 90), "JPEG"), (ids[2], (64, 64), "PNG")]:
        image_path, sal_path = Path(root) / IMAGE_DIR / f"{image_id}.jpg", Path(root) / SALIENCY_DIR / f"{image_id}.png"
        Image.open(image_path).convert("RGB").resize(size, Image.BICUBIC).save(image_path, format=fmt, quality=90)
        Image.open(sal_path).resize(size, Image.BILINEAR).save(sal_path)
    return manifest


MODES = [("warp", "official"), ("warp", "float"), ("short_crop", "official"), ("short_crop", "float")]


def both_paths(manifest, resize, formula, epoch=0, seed=4):
    """(CPU path batch, GPU path batch on the CPU device) of the whole train split, saliency and
    flips on, input 48 (warp: down from 64; short_crop: short side 72 up from 64, then 48)."""
    options = ImageOptions(resize=resize, short_side=72, flip=True, jitter=JITTER, jitter_formula=formula)
    cpu = LabelledImages(manifest, "train", 48, saliency=True, options=options, seed=seed)
    gpu = LabelledImages(manifest, "train", 48, saliency=True, options=dataclasses.replace(options, decode="gpu"),
                         seed=seed)
    cpu.epoch = gpu.epoch = epoch
    samples = [cpu[i] for i in range(len(cpu))]
    expected = {key: torch.stack([s[key] for s in samples]) for key in ("image", "saliency", "label")}
    raw = gpu.collate_fn([gpu[i] for i in range(len(gpu))])
    return expected, gpu.device_batch(raw, torch.device("cpu")), raw


def grey_levels(a, b, stats="imagenet"):
    """|a - b| of two normalised image batches, in 0..255 grey levels."""
    std = torch.tensor(IMAGE_STATS[stats][1]).view(1, 3, 1, 1)
    return ((a - b).abs() * std * 255).flatten()


@pytest.mark.parametrize("resize, formula", MODES)
def test_the_gpu_path_on_the_cpu_makes_the_cpu_paths_samples(manifest, resize, formula):
    """Same images, seeds and draws; the GPU path run on the CPU device, where torchvision's JPEG
    decoder is libjpeg-turbo as PIL's is, so that nothing but the augmentation arithmetic could
    differ.

    Measured on these 6 images (a landscape, a portrait, a PNG among them; 6 x 3 x 48 x 48 values)
    in epochs 0-2, every mode: 0 values differ, images and saliency maps bit-equal (max and mean
    difference 0 grey levels). With F.interpolate (antialias, rounded after each pass) in place
    of PIL's fixed-point weights and pass order, warp differed on 2-2.5% of the values, by at
    most 3-5 grey levels, 0.02-0.03 on average (short_crop: 0.1%, at most 5, 0.0014). The float
    formula's image mean is summed in another order than NumPy's and may round a value the other
    way: it is allowed one level on 0.1% of the values. On a GPU the JPEG decoder differs too
    (the CUDA test below)."""
    expected, batch, raw = both_paths(manifest, resize, formula)
    assert batch["image"].shape == expected["image"].shape == (6, 3, 48, 48)
    assert torch.equal(batch["label"], expected["label"]) and batch["index"].tolist() == list(range(6))
    if formula == "official":
        assert torch.equal(batch["image"], expected["image"])
    else:
        diff = grey_levels(batch["image"], expected["image"])
        assert diff.max() <= 1 + 1e-3 and (diff > 1e-3).float().mean() <= 0.001
    assert batch["saliency"].shape == expected["saliency"].shape == (6, 1, 48, 48)
    assert torch.equal(batch["saliency"], expected["saliency"])
    # the workers read bytes (the PNG: its pixels) and drew what the CPU path drew
    assert [e.dim() for e in raw["encoded"]] == [1, 1, 3, 1, 1, 1]
    assert any(d["flip"] for d in raw["draws"]) and not all(d["flip"] for d in raw["draws"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvjpeg)")
@pytest.mark.parametrize("resize, formula", MODES)
def test_the_gpu_path_on_cuda_differs_by_the_jpeg_decoder_only(manifest, resize, formula):
    """On CUDA, nvjpeg decodes instead of libjpeg: its IDCT and chroma upsampling may move
    values by a few levels, mostly at colour edges; the samples stay the CPU path's on average."""
    options = ImageOptions(resize=resize, short_side=72, flip=True, jitter=JITTER, jitter_formula=formula,
                           decode="gpu")
    gpu = LabelledImages(manifest, "train", 48, saliency=True, options=options, seed=4)
    raw = gpu.collate_fn([gpu[i] for i in range(len(gpu))])
    on_cuda = gpu.device_batch(raw, torch.device("cuda"))
    on_cpu = gpu.device_batch(raw, torch.device("cpu"))
    diff = grey_levels(on_cuda["image"].cpu(), on_cpu["image"])
    assert diff.mean() < 1.0, diff.mean()
    assert torch.equal(on_cuda["saliency"].cpu(), on_cpu["saliency"])  # PNGs: decoded by the workers


def test_each_epoch_draws_anew_in_both_paths(manifest):
    first, _, _ = both_paths(manifest, "short_crop", "official", epoch=0)
    expected, batch, _ = both_paths(manifest, "short_crop", "official", epoch=1)
    assert not torch.equal(first["image"], expected["image"])
    assert torch.equal(batch["image"], expected["image"])


def test_an_unknown_decode_mode_is_one_line(manifest):
    with pytest.raises(L2GError, match="decode must be one of cpu, gpu, got 'cuda'"):
        LabelledImages(manifest, "train", 48, options=ImageOptions(decode="cuda"))


def test_the_trainer_hands_the_step_the_cpu_paths_batches(manifest, tmp_path):
    """The Trainer's loader yields raw bytes and draws (decode gpu, made in a worker process); the
    batch reaches the step decoded and shaped on the device, equal to the decode cpu batch of the
    same step."""
    from l2g_core.runtime import setup_runtime
    from l2g_core.training import Trainer, TrainSettings

    class Line(torch.nn.Linear):
        def param_groups(self):
            return [[self.weight], [self.bias], [], []]

    seen = {}
    for decode in ("cpu", "gpu"):
        options = ImageOptions(resize="short_crop", short_side=72, flip=True, decode=decode)
        dataset = LabelledImages(manifest, "train", 48, saliency=True, options=options, seed=2)
        settings = TrainSettings(epochs=1, batch_size=3, lr=0.1, seed=2, workers=int(decode == "gpu"))
        trainer = Trainer({"line": Line(3, 1)}, dataset, settings, setup_runtime("cpu"), tmp_path / decode, {})
        batches = seen[decode] = []

        def step(batch, generator, trainer=trainer, batches=batches):
            batches.append(batch)
            return {"loss": trainer.wrapped["line"](batch["image"].mean(dim=(2, 3))).square().mean()}
        trainer.fit(step)
    assert len(seen["cpu"]) == len(seen["gpu"]) == 2
    for cpu, gpu in zip(seen["cpu"], seen["gpu"]):
        assert set(gpu) == set(cpu) == {"image", "label", "index", "saliency"}
        assert torch.equal(cpu["index"], gpu["index"])
        assert torch.equal(cpu["image"], gpu["image"]) and torch.equal(cpu["saliency"], gpu["saliency"])


def test_train_cls_with_decode_gpu_trains_the_decode_cpu_model(manifest, tmp_path):
    """The setting end to end (`l2g train-cls --decode gpu`, on the CPU): the same samples, so the
    same weights; the model file records the setting."""
    from l2g_core.cli import main

    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    paths = {}
    for decode in ("cpu", "gpu"):
        paths[decode] = tmp_path / decode / "model.pt"
        assert main(["train-cls", "--manifest", str(manifest_path), "--out", str(paths[decode]), "--epochs", "1",
                     "--input-size", "48", "--short-side", "72", "--flip", "--batch-size", "3", "--lr", "0.01",
                     "--decode", decode]) == 0
    cpu, gpu = (torch.load(paths[d], weights_only=True) for d in ("cpu", "gpu"))
    assert gpu["settings"]["image_options"]["decode"] == "gpu" and cpu["settings"]["image_options"]["decode"] == "cpu"
    assert cpu["state_dict"].keys() == gpu["state_dict"].keys()
    assert all(torch.equal(cpu["state_dict"][k], gpu["state_dict"][k]) for k in cpu["state_dict"])
