"""Layer pictures as DIGITS' "Show visualizations and statistics": activation grids, conv weight
images and parameter counts.

* ``tile(planes)``: N x H x W → one uint8 grid image (a square-ish grid of the planes with a
  one-pixel gap, scaled together to 0..255 so planes compare);
* ``activation_image(blob)``: C x H x W → the grid of its first ``MAX_TILES`` channels;
* ``weight_image(weights)``: a conv layer's O x I x kh x kw → one tile per filter (I = 3: a
  colour filter, channels in the file's order, Caffe's BGR; else its first input channel);
  None for weights that are not 4-D (InnerProduct's O x I: DIGITS shows no image either);
* ``param_counts(params)``: {layer: weights + biases} and the total;
* ``layer_visuals(net)``: per blob an activation row, per layer with parameters a weights row,
  {"name", "kind" (activation|weights), "shape", "png" (bytes or None), "param_count"
  (weights)}, in the net's order;
* ``png(image)``: uint8 H x W or H x W x 3 → PNG bytes.
"""
import math

import numpy as np

#: channels / filters shown per layer (DIGITS' vis_square showed them all; 64 keeps a page light)
MAX_TILES = 64


def tile(planes, pad=1):
    """(N, H, W) or (N, H, W, 3) float planes → uint8 grid, all planes scaled by one min/max."""
    planes = np.asarray(planes, dtype=np.float64)
    if planes.ndim not in (3, 4) or planes.shape[0] == 0:
        raise ValueError("tile wants N x H x W (x 3) planes, got shape %s" % (planes.shape,))
    finite = np.isfinite(planes)
    low = planes[finite].min() if finite.any() else 0.0
    high = planes[finite].max() if finite.any() else 0.0
    scaled = np.where(finite, (planes - low) / (high - low) if high > low else 0.0, 0.0)
    n = planes.shape[0]
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / float(cols)))
    h, w = planes.shape[1:3]
    shape = (rows * (h + pad) - pad, cols * (w + pad) - pad) + planes.shape[3:]
    grid = np.zeros(shape, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = \
            np.rint(scaled[i] * 255.0).astype(np.uint8)
    return grid


def activation_image(blob, max_tiles=MAX_TILES):
    """One image (N x C x H x W: the first item) or C x H x W blob → grid of its first channels;
    None for a blob without two spatial axes (e.g. a loss value)."""
    data = np.asarray(blob)
    if data.ndim == 4:
        data = data[0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or min(data.shape[1:]) < 1 or data.shape[0] == 0:
        return None
    return tile(data[:max_tiles])


def weight_image(weights, max_tiles=MAX_TILES):
    """Conv weights O x I x kh x kw → one tile per filter (colour when I = 3); None otherwise."""
    data = np.asarray(weights)
    if data.ndim != 4 or data.shape[0] == 0:
        return None
    data = data[:max_tiles]
    if data.shape[1] == 3:
        return tile(np.transpose(data, (0, 2, 3, 1)))
    return tile(data[:, 0])


def png(image):
    import cv2
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise ValueError("PNG encoding failed for an image of shape %s" % (np.shape(image),))
    return encoded.tobytes()


def param_counts(params):
    """{layer: sum of its parameter blob sizes} for ``params`` {layer: [arrays or blobs]}, and
    the total over layers."""
    counts = {}
    for name, blobs in params.items():
        counts[name] = int(sum(int(np.prod(np.shape(getattr(b, "data", b)))) for b in blobs))
    return counts, int(sum(counts.values()))


def layer_visuals(net, max_tiles=MAX_TILES):
    """Rows for every blob (activation) and every layer with parameters (weights) of a pycaffe
    net after a forward pass; see the module docstring."""
    rows = []
    for name, blob in net.blobs.items():
        image = activation_image(blob.data, max_tiles)
        rows.append({"name": name, "kind": "activation", "shape": list(np.shape(blob.data)),
                     "png": png(image) if image is not None else None})
    counts, _ = param_counts(net.params)
    for name, blobs in net.params.items():
        first = np.asarray(blobs[0].data) if len(blobs) else np.zeros((0,))
        image = weight_image(first, max_tiles)
        rows.append({"name": name, "kind": "weights", "shape": list(first.shape),
                     "param_count": counts[name], "png": png(image) if image is not None else None})
    return rows
