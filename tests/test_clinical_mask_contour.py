"""mask_contour outlines the largest component wherever it lies (review finding 6): also inside
the hole of a smaller component, which RETR_EXTERNAL alone never reports."""
from __future__ import annotations

import numpy as np

from caffeseg.jobs.clinical import mask_contour, polygon_area, record_clinical


def _ring_around_a_square():
    mask = np.zeros((64, 64), bool)
    mask[2:62, 2:62] = True
    mask[3:61, 3:61] = False          # a 1-px ring (236 px) ...
    mask[12:52, 12:52] = True         # ... around a 40×40 square (1600 px) inside its hole
    return mask


def test_the_largest_component_inside_a_smaller_ones_hole_is_outlined():
    outline = mask_contour(_ring_around_a_square())
    assert outline is not None
    # the 40×40 square's outline through its boundary pixel centres: 39 × 39 px², at x, y 12.5…51.5
    assert polygon_area(outline) == 39.0 * 39.0
    assert outline[:, 0].min() == 12.5 and outline[:, 0].max() == 51.5


def test_a_record_with_such_a_prediction_is_evaluated_instead_of_crashing():
    square = np.array([[12, 12], [51, 12], [51, 51], [12, 51]], np.float64) + 0.5
    row = record_clinical(_ring_around_a_square().astype(np.uint8), square, (1.0, 1.0))
    assert row["pred_lv_area_mm2"] == 39.0 * 39.0
    assert abs(row["hausdorff_mm"]) < 1e-9  # the expert outline is that square
