"""Hole masks: coverage bounds, determinism, connected strokes, fallbacks, bounding boxes."""

from __future__ import annotations

import pytest
import torch
from scipy import ndimage

from backbone_ssl.errors import UserError
from backbone_ssl.methods.masks import (
    MaskGenerator,
    box_mask,
    coverage,
    fit_box,
    free_form_mask,
    mask_boxes,
)


@pytest.mark.parametrize("kind", ["box", "free_form", "mixed"])
@pytest.mark.parametrize("size", [(64, 64), (32, 48)])
def test_coverage_stays_in_bounds_never_empty_or_full(kind, size):
    gen = MaskGenerator(kind, min_coverage=0.1, max_coverage=0.4)
    g = torch.Generator().manual_seed(0)
    masks = gen.batch(40, *size, g)
    assert masks.shape == (40, 1, *size)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    cov = coverage(masks[:, 0])
    assert float(cov.min()) >= 0.1 and float(cov.max()) <= 0.4
    if kind != "box":  # draws really vary in coverage, not one fixed fallback size
        assert float(cov.std()) > 0.02


def test_same_seed_same_masks_other_seed_other_masks():
    gen = MaskGenerator("mixed")
    a = gen.batch(6, 32, 32, torch.Generator().manual_seed(3))
    b = gen.batch(6, 32, 32, torch.Generator().manual_seed(3))
    c = gen.batch(6, 32, 32, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_a_free_form_stroke_is_one_connected_blob():
    for seed in range(15):
        g = torch.Generator().manual_seed(seed)
        mask = free_form_mask(48, 48, g, max_strokes=1, width=(0.03, 0.1))
        _, n_components = ndimage.label(mask.numpy())
        assert n_components == 1, seed


def test_unreachable_coverage_falls_back_to_an_in_range_box():
    # thin strokes never cover 80%: after the redraws the documented fallback box is used
    gen = MaskGenerator("free_form", min_coverage=0.8, max_coverage=0.9, max_strokes=1,
                        stroke_width=(0.02, 0.03), tries=3)
    mask = gen(40, 40, torch.Generator().manual_seed(0))
    assert 0.8 <= float(coverage(mask)) <= 0.9
    rows, cols = mask.any(dim=1), mask.any(dim=0)
    assert float(mask.sum()) == float(rows.sum() * cols.sum())  # a solid rectangle


def test_box_is_never_the_whole_image_nor_empty():
    g = torch.Generator().manual_seed(0)
    assert 0 < float(box_mask(8, 8, 0.999, g).sum()) < 64
    assert float(box_mask(8, 8, 0.0, g).sum()) == 1.0
    assert float(box_mask(1, 5, 1.0, g).sum()) == 4.0


@pytest.mark.parametrize("kwargs", [dict(min_coverage=0.0), dict(max_coverage=1.0),
                                    dict(min_coverage=0.5, max_coverage=0.4), dict(kind="blob"),
                                    dict(max_strokes=0), dict(stroke_width=(0.0, 0.1))])
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        MaskGenerator(**kwargs)


def test_an_image_too_small_to_mask_is_a_user_error():
    with pytest.raises(UserError, match="visible"):
        MaskGenerator()(1, 1)


def test_mask_boxes_by_hand():
    m = torch.zeros(3, 1, 10, 12)
    m[0, 0, 2:5, 3:9] = 1
    m[1, 0, 0, 0] = 1
    m[1, 0, 9, 11] = 1  # two specks: the box spans both
    boxes = mask_boxes(m)
    assert boxes.tolist() == [[3, 2, 9, 5], [0, 0, 12, 10], [0, 0, 12, 10]]  # empty -> whole


def test_fit_box_keeps_good_boxes_and_rescales_bad_ones_about_their_centre():
    mask, rescaled = fit_box([4, 4, 12, 12], 32, 32, 0.05, 0.5)
    assert not rescaled and float(mask.sum()) == 64.0 and mask[4:12, 4:12].all()
    full, rescaled = fit_box([0, 0, 32, 32], 32, 32, 0.05, 0.5)  # a face filling the panel
    assert rescaled and abs(float(coverage(full)) - 0.5) < 0.03
    assert full[16, 16] == 1  # still on the face's centre
    empty, rescaled = fit_box([30, 30, 30, 30], 32, 32, 0.05, 0.5)  # nothing left after resize
    assert rescaled and 0.04 <= float(coverage(empty)) <= 0.06
    assert empty[31, 31] == 1  # moved inside the image, next to where the face was
