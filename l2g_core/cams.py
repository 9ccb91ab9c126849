"""Class activation maps of a classifier over whole images, as the official test_l2g_voc.py
computes them (used by `l2g export-cams` and the report).

Each scale s is the image resized to round(s * side) with PIL's bicubic filter, fed with its
mirror image; every CAM channel is resized back to the image size (bicubic), un-mirrored and
averaged over all scales and flips; ReLU comes after the average; each channel is divided by its
maximum (+1e-8) and the present classes' maps are kept. Images of the same size are batched.

Shaped for a GPU: data-loader workers decode and rescale the images into pinned memory while the
device computes (ScaledBatches); only the present classes' maps are copied back, selected on the
device (present_maps); `amp` runs the network in bf16 on CUDA (the maps are resized and averaged
in fp32).
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from l2g_core.data.augment import normalise
from l2g_core.inference import size_batches


def scaled_inputs(images, scale, stats):
    """uint8 images (B, H, W, 3) of one size -> normalised (B, 3, h, w) at `scale`, PIL bicubic."""
    height, width = images.shape[1:3]
    size = (int(round(width * scale)), int(round(height * scale)))
    scaled = [np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC)) if scale != 1 else image
              for image in images]
    return torch.from_numpy(np.stack([normalise(image, stats) for image in scaled]))


class ScaledBatches(torch.utils.data.Dataset):
    """One item per batch of equal-size images: their ids, size and, per scale, the normalised
    inputs (B, 3, h, w), made in data-loader workers."""

    def __init__(self, layout, batches, scales, stats):
        self.layout, self.batches, self.scales, self.stats = layout, batches, scales, stats

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        ids = self.batches[index]
        images = np.stack([self.layout.load_image(i) for i in ids])
        return {"ids": ids, "size": images.shape[1:3],
                "inputs": [scaled_inputs(images, scale, self.stats) for scale in self.scales]}


@torch.no_grad()
def cams_of_inputs(model, inputs, size, flip, amp=False):
    """Normalised CAMs (B, C+1, H, W), background last, from the inputs of each scale (B, 3, h, w):
    the mean over scales and flips of the raw CAMs resized to `size` (H, W) (bicubic), then ReLU
    and each map divided by its maximum, as the official test_l2g_voc.py computes them."""
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    total, maps = 0, 0
    for batch in inputs:
        batch = batch.to(device, non_blocking=True)
        count = len(batch)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with autocast:
            raw = model(batch)["cams"]
        cams = F.interpolate(raw.float(), size=tuple(size), mode="bicubic", align_corners=False)
        if flip:
            cams = cams[:count] + cams[count:].flip(-1)
        total = total + cams
        maps += 2 if flip else 1
    cams = F.relu(total / maps)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-8)


def multiscale_cams(model, images, scales, flip, stats="imagenet", amp=False):
    """cams_of_inputs of uint8 images (B, H, W, 3) of one size."""
    return cams_of_inputs(model, [scaled_inputs(images, scale, stats) for scale in scales], images.shape[1:3],
                          flip, amp)


def present_maps(cams, ids, labels):
    """[(id, maps of its present classes (K, H, W) float32, classes)] of a batch of CAMs: the maps
    are picked on the device and copied to the host in one transfer."""
    classes = [labels[image_id] for image_id in ids]
    rows = torch.tensor([b * cams.shape[1] + c - 1 for b, present in enumerate(classes) for c in present],
                        dtype=torch.long).to(cams.device, non_blocking=True)
    picked = cams.flatten(0, 1).index_select(0, rows).cpu().numpy()
    ends = np.cumsum([len(present) for present in classes])[:-1]
    return list(zip(ids, np.split(picked, ends), classes))


def image_cams(model, layout, ids, labels, scales, flip, batch_size, stats="imagenet", workers=0, amp=False):
    """(id, CAMs of the present classes (K, H, W) float32, classes) of every image, batched by size."""
    device = next(model.parameters()).device
    batches = ScaledBatches(layout, list(size_batches(layout, ids, batch_size)), scales, stats)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    for batch in loader:
        cams = cams_of_inputs(model, batch["inputs"], batch["size"], flip, amp)
        yield from present_maps(cams, batch["ids"], labels)


def model_image_stats(state):
    """The normalisation a classifier was trained with (its settings), ImageNet's by default."""
    return state.get("settings", {}).get("image_stats") or "imagenet"
