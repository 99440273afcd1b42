"""jobs/boundary.py: boundary F-score and Hausdorff distance on hand-checkable masks."""
import numpy as np
import pytest

from caffeseg.jobs import boundary


def square(n=20, top=5, left=5, side=8):
    mask = np.zeros((n, n), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_boundary_of_a_square_is_its_outline():
    b = boundary.boundary(square())
    assert b.sum() == 4 * 8 - 4
    assert not b[6:12, 6:12].any() and b[5, 5:13].all()
    full = np.ones((4, 5), bool)
    assert boundary.boundary(full).sum() == 4 + 4 + 3 + 3  # the image border counts as outside


def test_identical_masks_score_perfectly():
    m = square()
    assert boundary.boundary_f_score(m, m) == (1.0, 1.0, 1.0)
    assert boundary.hausdorff(m, m) == 0.0


def test_shifted_square_distances_and_tolerance():
    a, b = square(), square(left=8)  # shifted 3 px to the right
    assert boundary.hausdorff(a, b) == pytest.approx(3.0)
    f, p, r = boundary.boundary_f_score(a, b, tolerance=3)
    assert (f, p, r) == (1.0, 1.0, 1.0)
    f, p, r = boundary.boundary_f_score(a, b, tolerance=1)
    # the top and bottom edges overlap for 5 of 8 columns; vertical edges are 3 px away
    assert 0 < p < 1 and 0 < r < 1 and f == pytest.approx(2 * p * r / (p + r))


def test_spurious_blob_raises_hausdorff_but_not_hd95_much():
    gt = square(n=60, side=20)
    pred = gt.copy()
    pred[50, 50] = True  # one far-away false pixel
    assert boundary.hausdorff(pred, gt) == pytest.approx(np.hypot(50 - 24, 50 - 24), abs=0.1)
    assert boundary.hausdorff(pred, gt, percentile=95) < 1.0
    assert boundary.components(pred) == 2 and boundary.components(gt) == 1


def test_empty_cases():
    empty = np.zeros((10, 10), bool)
    assert boundary.boundary_f_score(empty, empty) == (1.0, 1.0, 1.0)
    assert boundary.hausdorff(empty, empty) == 0.0
    f, _, _ = boundary.boundary_f_score(empty, square(n=10, top=2, left=2, side=4))
    assert f == 0.0
    assert np.isnan(boundary.hausdorff(empty, square(n=10, top=2, left=2, side=4)))
    with pytest.raises(ValueError):
        boundary.hausdorff(empty, np.zeros((9, 10), bool))
