"""Sunnybrook expert contour files -> polygons -> filled label masks.

A contour file holds one "x y" point per line (floats, pixel coordinates, x = column).
The label is the polygon filled with OpenCV's fillPoly after converting the points to int by
truncation towards zero (numpy ``astype(int)``), which is how the original DIGITS Sunnybrook
plugin rounded them, so labels match datasets built with DIGITS pixel for pixel.
"""

import numpy as np

from caffeseg.plugin.base import EntryError

# A contour enclosing less than this (in pixels²) outlines nothing: its points lie on one line.
MIN_AREA_PX = 0.5


def read_contour(path):
    """Return an N x 2 float array of (x, y) points; EntryError names the file and line."""
    points = []
    try:
        with open(path, "r", encoding="ascii", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text:
                    continue
                parts = text.split()
                if len(parts) != 2:
                    raise EntryError("%s line %d: expected two numbers 'x y', got %r"
                                     % (path, lineno, text), source=path)
                try:
                    x, y = float(parts[0]), float(parts[1])
                except ValueError:
                    raise EntryError("%s line %d: not a number in %r" % (path, lineno, text),
                                     source=path) from None
                if not (np.isfinite(x) and np.isfinite(y)):
                    raise EntryError("%s line %d: non-finite coordinate" % (path, lineno),
                                     source=path)
                points.append((x, y))
    except OSError as exc:
        raise EntryError("%s: cannot read contour file (%s)" % (path, exc.strerror or exc),
                         source=path) from None
    if len(points) < 3:
        raise EntryError("%s: a contour needs at least 3 points, found %d" % (path, len(points)),
                         source=path)
    points = np.asarray(points, dtype=np.float64)
    area = polygon_area(points)
    if area < MIN_AREA_PX:
        # fillPoly would draw the points' line as a label a few pixels wide
        raise EntryError("%s: the contour encloses no area (%.2f px² from %d points on one line); "
                         "skipped" % (path, area, len(points)), source=path)
    return points


def polygon_area(points):
    """Area enclosed by the closed polygon of N x 2 ``points`` (shoelace formula), in pixels²."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def check_inside(points, shape, path):
    """Refuse contours with points outside the H x W image (a mismatched contour/image)."""
    h, w = shape
    xs, ys = points[:, 0], points[:, 1]
    bad = (xs < 0) | (ys < 0) | (xs > w - 1) | (ys > h - 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise EntryError("%s: %d contour point(s) outside the %dx%d image, first (%.2f, %.2f)"
                         % (path, int(bad.sum()), w, h, xs[i], ys[i]), source=path)


def fill_polygon(mask, points, value):
    """Fill ``points`` into the uint8 ``mask`` in place with ``value`` (DIGITS rounding)."""
    import cv2
    poly = points.astype(np.int32)  # truncation towards zero, as DIGITS' astype(np.int)
    cv2.fillPoly(mask, [poly.reshape(-1, 1, 2)], int(value))
    return mask


def polygon_mask(points, shape, value=1):
    return fill_polygon(np.zeros(shape, dtype=np.uint8), points, value)
