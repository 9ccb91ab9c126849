"""The L2G method on small hand-made tensors: targets, crops, alignment, loss."""

import pytest
import torch

from l2g_core.l2g import (align_global, boxes_to_rois, crop_batch, local_targets, normalise_cams,
                          sample_boxes, transfer_loss)
from l2g_core.models import build_classifier, classification_loss


def _cams():
    """One crop, 2 foreground classes + background, 2x2 pixels."""
    cams = torch.zeros(1, 3, 2, 2)
    cams[0, 0] = torch.tensor([[4.0, 1.0], [0.0, -3.0]])  # class 1: peak 4
    cams[0, 1] = torch.tensor([[9.0, 9.0], [9.0, 9.0]])  # class 2: strong everywhere, absent below
    cams[0, 2] = torch.tensor([[1.0, 2.0], [2.0, 0.0]])  # background: peak 2
    return cams


def test_targets_zero_absent_classes_and_keep_one_winner():
    targets = local_targets(_cams(), torch.tensor([[1.0, 0.0]]))
    assert torch.all(targets[:, 1] == 0)  # class 2 is absent from the image
    assert torch.all((targets > 0).sum(dim=1) <= 1)  # one winner per pixel
    # normalised scores: class 1 = [[1, .25], [0, 0]], background = [[.5, 1], [1, 0]]
    expected = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0, 0], [0, 0]], [[0.0, 1.0], [1.0, 0.0]]])
    assert torch.allclose(targets[0], expected)


def test_saliency_gates_foreground_inside_and_background_outside():
    saliency = torch.tensor([[[[0.9, 0.2], [0.3, 0.8]]]])
    targets = local_targets(_cams(), torch.tensor([[1.0, 0.0]]), saliency)
    # pixel (0,0): class 1 wins -> saliency 0.9; (0,1) and (1,0): background wins -> 1 - saliency
    assert torch.isclose(targets[0, 0, 0, 0], torch.tensor(0.9))
    assert torch.isclose(targets[0, 2, 0, 1], torch.tensor(0.8))
    assert torch.isclose(targets[0, 2, 1, 0], torch.tensor(0.7))
    # pixel (1,1): every channel is zero after ReLU -> no active winner -> all-zero target
    assert torch.all(targets[0, :, 1, 1] == 0)


def test_threshold_background_replaces_the_untrained_channel():
    targets = local_targets(_cams(), torch.tensor([[1.0, 0.0]]), background="threshold", bg_score=0.3)
    assert torch.isclose(targets[0, 0, 0, 0], torch.tensor(1.0))  # 1.0 > 0.3
    assert torch.isclose(targets[0, 2, 0, 1], torch.tensor(0.3))  # class 1 only 0.25 there
    assert torch.isclose(targets[0, 2, 1, 1], torch.tensor(0.3))


def test_normalised_cams_peak_at_one():
    cams = normalise_cams(torch.randn(3, 4, 5, 5) * 5 + 1)
    assert torch.all(cams >= 0)
    assert torch.allclose(cams.amax(dim=(2, 3)), torch.ones(3, 4), atol=1e-5)


def test_crops_equal_slices_of_their_images():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    boxes = sample_boxes(2, 3, 8, 16, torch.Generator().manual_seed(1))
    assert boxes.shape == (2, 3, 4) and torch.all(boxes[..., 2:] - boxes[..., :2] == 8)
    crops = crop_batch(images, boxes, 8)
    for b in range(2):
        for n in range(3):
            x1, y1, x2, y2 = boxes[b, n].tolist()
            assert torch.equal(crops[b * 3 + n], images[b, :, y1:y2, x1:x2])


def test_corner_crops_cover_the_image_and_the_rest_are_random():
    boxes = sample_boxes(3, 6, 10, 16, torch.Generator().manual_seed(0), corners=True)
    far = 16 - 10
    for image in boxes:
        assert image[:4, :2].tolist() == [[0, 0], [0, far], [far, 0], [far, far]]
        assert torch.all(image[:, 2:] - image[:, :2] == 10)
        covered = torch.zeros(16, 16, dtype=torch.bool)
        for x1, y1, x2, y2 in image[:4].tolist():
            covered[y1:y2, x1:x2] = True
        assert covered.all()
    extra = boxes[:, 4:, :2]
    assert torch.all((extra >= 0) & (extra < far)) and len(set(map(tuple, extra.reshape(-1, 2).tolist()))) > 1


def test_corner_crops_need_four_crops():
    with pytest.raises(ValueError, match="at least 4 crops"):
        sample_boxes(1, 3, 8, 16, corners=True)


def test_rois_carry_their_image_index():
    boxes = torch.tensor([[[0, 0, 8, 8], [4, 4, 12, 12]], [[2, 2, 10, 10], [8, 0, 16, 8]]])
    rois = boxes_to_rois(boxes)
    assert rois[:, 0].tolist() == [0, 0, 1, 1] and rois[3, 1:].tolist() == [8, 0, 16, 8]


def test_aligned_global_cams_are_probabilities_of_the_boxed_region():
    cams = torch.zeros(1, 3, 8, 8)
    cams[0, 1, :4, :4] = 10.0  # class 2 dominates the top-left quarter only
    boxes = torch.tensor([[[0, 0, 32, 32], [32, 32, 64, 64]]])  # stride 8 -> quarters of the map
    probs = align_global(cams, boxes, (4, 4), stride=8, mode="aligned")
    assert probs.shape == (2, 3, 4, 4)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 4, 4))
    assert probs[0, 1].min() > 0.99 and probs[1, 1].max() < 0.34


def test_transfer_loss_can_leave_empty_targets_out():
    probs = torch.full((1, 2, 1, 2), 0.5)
    targets = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # second pixel: empty target
    assert torch.isclose(transfer_loss(probs, targets), torch.tensor((0.25 + 0.25 + 0.25 + 0.25) / 4))
    assert torch.isclose(transfer_loss(probs, targets, ignore_empty=True), torch.tensor(0.25))


def test_l2g_loss_falls_when_a_tiny_batch_is_overfitted():
    torch.manual_seed(0)
    global_net, local_net = build_classifier("small", 3), build_classifier("small", 3)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    saliency = torch.rand(2, 1, 64, 64)
    boxes = sample_boxes(2, 2, 32, 64, torch.Generator().manual_seed(0))
    params = list(global_net.parameters()) + list(local_net.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(25):
        out_g, out_l = global_net(images), local_net(crop_batch(images, boxes, 32))
        size = out_l["cams"].shape[-2:]
        sal = torch.nn.functional.interpolate(crop_batch(saliency, boxes, 32), size=size, mode="area")
        crop_labels = labels.repeat_interleave(2, dim=0)
        targets = local_targets(out_l["cams"].detach(), crop_labels, sal)
        kd = 10 * transfer_loss(align_global(out_g["cams"], boxes, size, 8), targets)
        loss = kd + classification_loss(out_l["logits"], crop_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_saliency_background_gives_targets_that_sum_to_one():
    saliency = torch.tensor([[[[0.9, 0.2], [0.3, 0.0]]]])
    targets = local_targets(_cams(), torch.tensor([[1.0, 0.0]]), saliency, background="saliency")
    assert torch.allclose(targets.sum(dim=1), torch.ones(1, 2, 2))
    assert torch.all(targets[:, 1] == 0)  # the absent class never wins
    assert torch.allclose(targets[0, 0], saliency[0, 0])  # the only present class carries the saliency
    assert torch.allclose(targets[0, 2], 1 - saliency[0, 0])


def test_complement_background_takes_what_the_winning_class_leaves():
    labels = torch.tensor([[1.0, 0.0]])
    targets = local_targets(_cams(), labels, background="complement")
    # class 1 normalised: [[1, .25], [0, 0]]; class 2 is absent from the image
    class_1 = torch.tensor([[1.0, 0.25], [0.0, 0.0]])
    assert torch.allclose(targets[0, 0], class_1)
    assert torch.all(targets[:, 1] == 0)
    assert torch.allclose(targets[0, 2], 1 - class_1)  # the untrained background channel is not used
    assert torch.allclose(targets.sum(dim=1), torch.ones(1, 2, 2))



def test_complement_with_saliency_weakens_salient_regions_the_local_cam_does_not_see():
    saliency = torch.tensor([[[[0.9, 0.8], [0.3, 0.0]]]])
    targets = local_targets(_cams(), torch.tensor([[1.0, 0.0]]), saliency, background="complement")
    # class 1 normalised: [[1, .25], [0, 0]]: at (0,1) salient (0.8) but a weak CAM -> 0.2
    expected = torch.tensor([[0.9, 0.2], [0.0, 0.0]])
    assert torch.allclose(targets[0, 0], expected)
    assert torch.allclose(targets[0, 2], 1 - expected)
    assert torch.allclose(targets.sum(dim=1), torch.ones(1, 2, 2))
