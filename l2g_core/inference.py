"""Multi-scale, flipped inference over whole images (DeepLab prediction), images batched by size.

Images of the same size are batched; each scale runs once for the batch and its mirror image
together (multiscale_views, on the device); the maps are resized back to the original size,
un-flipped and summed (combine_views, wherever the maps are: the labelling job is on the CPU).
"""

import torch
import torch.nn.functional as F
from PIL import Image

from l2g_core.data.torch_data import normalise


@torch.no_grad()
def multiscale_views(forward, images, scales, flip):
    """The network's maps of every view of a batch, at the network's resolution.

    images: (B, 3, H, W) of equal size. Returns one (B, K, h, w) float tensor per view, in the
    order scale 1, scale 1 flipped (with `flip`), scale 2, ...; a flipped view stays mirrored
    (combine_views mirrors it back after resizing)."""
    height, width = images.shape[-2:]
    batch = torch.cat([images, images.flip(-1)]) if flip else images
    views = []
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = F.interpolate(batch, size=size, mode="bilinear", align_corners=False) if scale != 1 else batch
        maps = forward(scaled).float()
        views.extend(maps.split(len(images)) if flip else [maps])
    return views


def combine_views(views, size, flip, post=None):
    """Sum of the views of multiscale_views, each resized to `size` (H, W), `post` applied (e.g.
    the softmax of logits) and, for a flipped view, mirrored back. Returns (B, K, H, W)."""
    def resized(maps):
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps if post is None else post(maps)

    total = 0
    per_scale = 2 if flip else 1
    for start in range(0, len(views), per_scale):
        maps = resized(views[start])
        if flip:
            maps = maps + resized(views[start + 1]).flip(-1)
        total = total + maps
    return total


def size_batches(layout, ids, batch_size):
    """Lists of at most batch_size ids whose images have one size (read from the file headers)."""
    by_size = {}
    for image_id in ids:
        with Image.open(layout.image_path(image_id)) as image:
            by_size.setdefault(image.size, []).append(image_id)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def image_batches(layout, ids, batch_size, device):
    """(batch ids, normalised images (B, 3, H, W) on `device`), ids grouped by image size."""
    for batch_ids in size_batches(layout, ids, batch_size):
        yield batch_ids, torch.stack([normalise(layout.load_image(i)) for i in batch_ids]).to(device)
