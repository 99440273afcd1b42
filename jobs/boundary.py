"""Boundary quality of a binary segmentation: boundary F-score and Hausdorff distance.

Beside Dice, it asks whether a network draws the left-ventricle outline well (Dice rewards
overlap and is forgiving of a blocky or jagged outline); ``bench/lab_ladder.py`` reports it.

* ``boundary(mask)``: the mask's boundary pixels (the mask minus its erosion by a 4-neighbour cross).
* ``boundary_f_score(pred, gt, tolerance)``: precision = share of predicted boundary pixels
  within ``tolerance`` pixels (Euclidean) of a ground-truth boundary pixel, recall = the
  converse, F = 2PR / (P + R) (the "BF score" of Csurka et al., 2013).
* ``hausdorff(pred, gt, percentile=100)``: the symmetric Hausdorff distance between the two
  boundaries in pixels (``percentile=95`` gives the HD95 used in medical segmentation).

Empty cases: both masks empty → F = 1, distance 0 (perfect agreement); exactly one empty →
F = 0, distance NaN (undefined; callers count such images separately instead of averaging an
arbitrary number into the mean). numpy + OpenCV only.
"""
import numpy as np

import cv2

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def boundary(mask):
    """Boolean boundary of a 2-D mask: pixels of the mask with a 4-neighbour outside it
    (the image border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError("boundary: expected a 2-D mask, got shape %s" % (mask.shape,))
    padded = np.pad(mask, 1, constant_values=False).astype(np.uint8)
    eroded = cv2.erode(padded, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def distance_to(points_mask):
    """Euclidean distance from every pixel to the nearest True pixel of ``points_mask``."""
    source = np.where(np.asarray(points_mask, dtype=bool), 0, 1).astype(np.uint8)
    return cv2.distanceTransform(source, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _check_pair(pred, gt):
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError("expected two 2-D masks of one shape, got %s and %s" % (pred.shape, gt.shape))
    return pred, gt


def boundary_f_score(pred, gt, tolerance=2.0):
    """(F, precision, recall) of the predicted boundary against the true one, at ``tolerance`` px."""
    pred, gt = _check_pair(pred, gt)
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0, 1.0, 1.0
    if not bp.any() or not bg.any():
        return 0.0, float(not bp.any()), float(not bg.any())
    precision = float(np.mean(distance_to(bg)[bp] <= tolerance))
    recall = float(np.mean(distance_to(bp)[bg] <= tolerance))
    if precision + recall == 0:
        return 0.0, precision, recall
    return 2 * precision * recall / (precision + recall), precision, recall


def hausdorff(pred, gt, percentile=100.0):
    """Symmetric Hausdorff distance (px) between the boundaries; ``percentile`` < 100 takes that
    percentile of each directed distance set instead of its maximum (HD95 for 95)."""
    pred, gt = _check_pair(pred, gt)
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() and not bg.any():
        return 0.0
    if not bp.any() or not bg.any():
        return float("nan")
    forward = distance_to(bg)[bp]
    backward = distance_to(bp)[bg]
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def components(mask):
    """Number of 8-connected foreground components (1 for a clean ventricle outline)."""
    count, _ = cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=8)
    return int(count - 1)
