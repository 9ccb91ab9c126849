"""Multi-scale, flipped inference over whole images (DeepLab prediction), images batched by size.

Images of the same size are batched; each scale runs once for the batch and its mirror image
together, and the maps are resized back to the original size, un-flipped and summed.
"""

import torch
import torch.nn.functional as F
from PIL import Image

from l2g_core.data.torch_data import normalise


@torch.no_grad()
def multiscale_sum(forward, images, scales, flip, post=None):
    """Sum over scales (and flips) of `forward(scaled batch)` resized to the input size.

    forward: (N, 3, h, w) -> (N, K, h', w') maps; post: applied after resizing (e.g. softmax of
    logits), or None. images: (B, 3, H, W) of equal size. Returns (B, K, H, W).
    """
    height, width = images.shape[-2:]
    batch = torch.cat([images, images.flip(-1)]) if flip else images
    total = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = F.interpolate(batch, size=size, mode="bilinear", align_corners=False) if scale != 1 else batch
        maps = F.interpolate(forward(scaled).float(), size=(height, width), mode="bilinear", align_corners=False)
        if post is not None:
            maps = post(maps)
        if flip:
            maps = maps[: len(images)] + maps[len(images):].flip(-1)
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
