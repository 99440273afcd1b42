"""Server-side rendering of features, labels and predictions to PNG bytes.

Medical images are 16-bit with a few very bright pixels, so a min–max stretch shows a black
picture: features are windowed between two percentiles (default 1st and 99th) of their own
values before being scaled to 8 bits.
"""
from __future__ import annotations

import numpy as np

DEFAULT_PALETTE = [(0, 0, 0), (255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120),
                   (200, 120, 255), (255, 140, 200), (140, 140, 140)]


def _encode_png(image: np.ndarray) -> bytes:
    import cv2
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]  # OpenCV writes BGR
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def to_display(feature: np.ndarray) -> np.ndarray:
    """C×H×W or H×W → H×W (1 channel) or H×W×3, still in the original value range."""
    arr = np.asarray(feature)
    if arr.ndim == 3:
        if arr.shape[0] == 1:
            arr = arr[0]
        elif arr.shape[0] == 3:
            arr = np.moveaxis(arr, 0, -1)
        elif arr.shape[-1] in (1, 3):
            arr = arr[..., 0] if arr.shape[-1] == 1 else arr
        else:
            arr = arr[0]
    return arr


def window(arr: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Values mapped to uint8 with [low percentile, high percentile] → [0, 255]."""
    data = np.asarray(arr, dtype=np.float64)
    if data.size == 0:
        return np.zeros(data.shape, np.uint8)
    lo, hi = np.percentile(data, [low_pct, high_pct])
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.zeros(data.shape, np.uint8)
    scaled = (data - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def feature_png(feature: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> bytes:
    return _encode_png(window(to_display(feature), low_pct, high_pct))


def colorize(label: np.ndarray, palette=None) -> np.ndarray:
    """Class indices H×W → H×W×3 uint8 with the dataset's palette (default palette beyond it)."""
    lab = np.asarray(label)
    if lab.ndim == 3:
        lab = lab[0]
    colors = [tuple(int(c) for c in p) for p in (palette or [])]
    colors += DEFAULT_PALETTE[len(colors):]
    lut = np.zeros((256, 3), np.uint8)
    for i in range(256):
        lut[i] = colors[i % len(colors)] if i < len(colors) else DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)]
    return lut[np.clip(lab.astype(np.int64), 0, 255)]


def label_png(label: np.ndarray, palette=None) -> bytes:
    return _encode_png(colorize(label, palette))


def class_map_png(label: np.ndarray) -> bytes:
    """Class indices as an 8-bit grayscale PNG: the browser colours and outlines it itself."""
    lab = np.asarray(label)
    if lab.ndim == 3:
        lab = lab[0]
    return _encode_png(np.clip(lab, 0, 255).astype(np.uint8))


def histogram(values: np.ndarray, bins: int = 20) -> dict:
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        return {"counts": [], "edges": []}
    counts, edges = np.histogram(data, bins=bins)
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges]}
