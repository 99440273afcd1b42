"""Segmentation metrics and losses as Caffe Python layers (module name used by the DIGITS lab).

A prototxt refers to them as::

    layer {
      name: "dice"  type: "Python"  bottom: "score"  bottom: "label"  top: "dice"
      python_param { module: "digits_python_layers"  layer: "Dice" }
      include { stage: "val" }
    }

Every layer takes two bottoms: ``score`` (N x C x H x W class scores, e.g. the cropped
upscore of an FCN) and ``label`` (N x 1 x H x W, or N x H x W, integer class ids stored as
floats). Pixels whose label equals ``ignore_label`` (255 by default, the VOC "void" value)
are left out of every count.

``param_str`` is optional. It may be a Python/JSON dict literal
(``"{'class': 1, 'smooth': 1.0}"``) or ``key=value`` pairs separated by commas or spaces
(``"class=1 smooth=1.0"``). Unknown keys are an error, so a typo does not go unnoticed.

This file must keep running under Python 3.9 with numpy only and real pycaffe, because
users copy it next to their own Caffe: no ``match``, no ``X | Y`` unions, no newer stdlib.
"""
import ast

import numpy as np

import caffe


DEFAULT_IGNORE_LABEL = 255


def parse_param_str(param_str, allowed, layer_name):
    """Options from ``param_str`` as a dict; ``allowed`` maps each key to its default."""
    options = dict(allowed)
    text = (param_str or "").strip()
    if not text:
        return options
    if text.startswith("{"):
        try:
            given = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise ValueError("%s: param_str %r is not a valid dict literal (%s)"
                             % (layer_name, param_str, exc))
        if not isinstance(given, dict):
            raise ValueError("%s: param_str %r must be a dict" % (layer_name, param_str))
    else:
        given = {}
        for item in text.replace(",", " ").split():
            if "=" not in item:
                raise ValueError("%s: param_str item %r is not key=value" % (layer_name, item))
            key, value = item.split("=", 1)
            try:
                given[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                given[key.strip()] = value.strip()  # bare word, e.g. class=all
    for key, value in given.items():
        if key not in allowed:
            raise ValueError("%s: unknown param_str key %r (known: %s)"
                             % (layer_name, key, ", ".join(sorted(allowed))))
        options[key] = value
    return options


def labels_of(label_blob_data, layer_name):
    """The label array as int64 N x H x W (accepts N x 1 x H x W and N x H x W)."""
    labels = np.asarray(label_blob_data)
    if labels.ndim == 4:
        if labels.shape[1] != 1:
            raise ValueError("%s: label must have one channel, got shape %s"
                             % (layer_name, tuple(labels.shape)))
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError("%s: label must be N x 1 x H x W or N x H x W, got shape %s"
                         % (layer_name, tuple(labels.shape)))
    return np.rint(labels).astype(np.int64)


def label_planes(label_blob_data, layer_name):
    """Like :func:`labels_of`, but float32 with the ids rounded: cheaper when the labels are only
    compared with class ids."""
    labels = np.asarray(label_blob_data)
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3:
        labels_of(labels, layer_name)  # raises with the shape named
    return np.rint(labels)


def count_per_image(mask):
    """Number of true pixels in each image of an N x H x W boolean mask (float64, length N)."""
    return np.array([np.count_nonzero(image) for image in mask], dtype=np.float64)


def check_score_and_label(bottom, layer_name):
    """Shape checks shared by all layers; returns (N, C, H, W) of the score."""
    if len(bottom) != 2:
        raise ValueError("%s: needs two bottoms (score, label), got %d" % (layer_name, len(bottom)))
    score_shape = tuple(bottom[0].data.shape)
    label_shape = tuple(bottom[1].data.shape)
    if len(score_shape) != 4:
        raise ValueError("%s: score must be N x C x H x W, got shape %s" % (layer_name, score_shape))
    n, c, h, w = score_shape
    if label_shape not in ((n, 1, h, w), (n, h, w)):
        raise ValueError("%s: label shape %s does not match score shape %s (expected %s)"
                         % (layer_name, label_shape, score_shape, (n, 1, h, w)))
    return n, c, h, w


def channel_argmax(scores):
    """np.argmax(scores, axis=1) for N x C x H x W scores, ties to the lowest class as numpy does.

    A running maximum over the C channel planes instead of numpy's strided reduction along
    axis 1, which is about ten times slower for the few classes of a segmentation net and made
    the metric layers a visible share of a training step. One difference: a NaN score never
    wins here, where numpy picks the first NaN (a diverged net; the runner stops on NaN loss).
    """
    scores = np.asarray(scores)
    best = np.array(scores[:, 0], copy=True)
    index = np.zeros(best.shape, dtype=np.int64)
    for channel in range(1, scores.shape[1]):
        plane = scores[:, channel]
        better = plane > best  # strictly greater: an earlier class keeps a tie
        index[better] = channel
        np.maximum(best, plane, out=best)
    return index


def predicted_as(scores, target_class):
    """Boolean N x H x W: pixels whose argmax over channels is ``target_class`` (same ties and
    NaN rule as :func:`channel_argmax`)."""
    scores = np.asarray(scores)
    target = scores[:, target_class]
    chosen = np.ones(target.shape, dtype=bool)
    for channel in range(scores.shape[1]):
        if channel < target_class:
            chosen &= target > scores[:, channel]
        elif channel > target_class:
            chosen &= target >= scores[:, channel]
    return chosen


def dice_ratio(intersection, size_a, size_b):
    """2|A∩B| / (|A|+|B|) elementwise, with 1.0 where both sets are empty (perfect agreement)."""
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(size_a, dtype=np.float64) + np.asarray(size_b, dtype=np.float64)
    safe_total = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 2.0 * intersection / safe_total, 1.0)


class Dice(caffe.Layer):
    """Dice coefficient of the argmax prediction against the label (the DIGITS lab's metric).

    For each image n: P = pixels predicted as ``class`` (argmax over channels), L = pixels
    labelled ``class``; Dice_n = 2|P∩L| / (|P|+|L|). The top is the mean over the batch.

    Empty case: an image with no ``class`` pixel in the label *and* none in the prediction
    scores 1.0 (the prediction is exactly right), not NaN, so the mean stays defined.

    Options: ``class`` (foreground class id, default 1), ``ignore_label`` (default 255).
    Top shape (1,). This is a metric: backward does nothing.
    """

    OPTIONS = {"class": 1, "ignore_label": DEFAULT_IGNORE_LABEL}

    def setup(self, bottom, top):
        name = type(self).__name__
        self.options = parse_param_str(getattr(self, "param_str", ""), self.OPTIONS, name)
        if len(bottom) != 2:
            raise ValueError("%s: needs two bottoms (score, label), got %d" % (name, len(bottom)))
        if len(top) != 1:
            raise ValueError("%s: needs exactly one top, got %d" % (name, len(top)))

    def reshape(self, bottom, top):
        n, c, h, w = check_score_and_label(bottom, type(self).__name__)
        if not 0 <= int(self.options["class"]) < c:
            raise ValueError("Dice: class %s is out of range for %d score channels"
                             % (self.options["class"], c))
        top[0].reshape(1)

    def forward(self, bottom, top):
        # Runs every training iteration, so it avoids full-size temporaries it does not need:
        # labels stay float (rounded in place of an int64 copy) and the ignore mask is applied
        # only when some pixel carries the ignore label.
        target_class = int(self.options["class"])
        labels = label_planes(bottom[1].data, "Dice")
        predicted = predicted_as(bottom[0].data, target_class)
        labelled = labels == target_class
        ignore = int(self.options["ignore_label"])
        # A label value the float type cannot hold exactly is never the (integer) ignore label.
        exact = float(labels.dtype.type(ignore)) == ignore
        ignored = labels == ignore if exact else np.zeros(labels.shape, dtype=bool)
        if ignored.any():
            valid = ~ignored
            predicted &= valid
            labelled &= valid
        per_image = dice_ratio(count_per_image(predicted & labelled),
                               count_per_image(predicted), count_per_image(labelled))
        top[0].data[...] = np.mean(per_image)

    def backward(self, top, propagate_down, bottom):
        # A metric: no gradient flows back (the argmax has none).
        pass


class DiceLoss(caffe.Layer):
    """Soft Dice loss on softmax probabilities; usable as the training loss (set ``loss_weight``).

    p = softmax(score) over the channel axis, g = one-hot label. For each image n and each
    selected class k: D_nk = (2 Σ p·g + smooth) / (Σ p + Σ g + smooth), sums over the valid
    pixels. Loss = 1 − mean over n and k of D_nk.

    Options: ``class`` — one class id (default 1) or ``"all"`` for the mean over every class;
    ``smooth`` (default 1.0; keeps the ratio defined and its gradient bounded when a class
    is absent); ``ignore_label`` (default 255).

    As for every Python layer, Caffe adds it to the objective only with ``loss_weight`` set.
    Top shape (1,). Backward writes the gradient w.r.t. the score; the label gets none.
    """

    OPTIONS = {"class": 1, "smooth": 1.0, "ignore_label": DEFAULT_IGNORE_LABEL}

    def setup(self, bottom, top):
        name = type(self).__name__
        self.options = parse_param_str(getattr(self, "param_str", ""), self.OPTIONS, name)
        if float(self.options["smooth"]) < 0:
            raise ValueError("DiceLoss: smooth must be >= 0, got %s" % self.options["smooth"])
        if len(bottom) != 2:
            raise ValueError("%s: needs two bottoms (score, label), got %d" % (name, len(bottom)))
        if len(top) != 1:
            raise ValueError("%s: needs exactly one top, got %d" % (name, len(top)))

    def selected_classes(self, num_classes):
        chosen = self.options["class"]
        if isinstance(chosen, str) and chosen.lower() == "all":
            return list(range(num_classes))
        if not 0 <= int(chosen) < num_classes:
            raise ValueError("DiceLoss: class %s is out of range for %d score channels"
                             % (chosen, num_classes))
        return [int(chosen)]

    def reshape(self, bottom, top):
        n, c, h, w = check_score_and_label(bottom, "DiceLoss")
        self.classes = self.selected_classes(c)
        top[0].reshape(1)

    def forward(self, bottom, top):
        scores = np.asarray(bottom[0].data, dtype=np.float64)
        labels = labels_of(bottom[1].data, "DiceLoss")
        shifted = scores - scores.max(axis=1, keepdims=True)  # stable softmax
        exp = np.exp(shifted)
        probs = exp / exp.sum(axis=1, keepdims=True)
        valid = (labels != int(self.options["ignore_label"])).astype(np.float64)
        smooth = float(self.options["smooth"])

        # One row per selected class: masked probabilities and one-hot targets, N x K x H x W.
        p = probs[:, self.classes] * valid[:, None]
        g = np.stack([(labels == k) for k in self.classes], axis=1).astype(np.float64) * valid[:, None]
        intersection = np.sum(p * g, axis=(2, 3))
        total = np.sum(p, axis=(2, 3)) + np.sum(g, axis=(2, 3))
        dice = (2.0 * intersection + smooth) / (total + smooth)

        # Kept for backward (Caffe calls forward right before backward on the same bottoms).
        self.saved = (probs, p, g, valid, intersection, total, smooth)
        top[0].data[...] = 1.0 - np.mean(dice)

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0  # labels are not differentiable
        if not propagate_down[0]:
            return
        probs, p, g, valid, intersection, total, smooth = self.saved
        n, k = intersection.shape
        denominator = (total + smooth)[:, :, None, None]
        numerator = (2.0 * intersection + smooth)[:, :, None, None]
        # dD/dp_i = (2 g_i (S + s) − (2I + s)) / (S + s)^2 on valid pixels
        d_dice = (2.0 * g * denominator - numerator) / denominator ** 2 * valid[:, None]
        d_loss_d_p = np.zeros_like(probs)
        d_loss_d_p[:, self.classes] = -d_dice / float(n * k)
        # Softmax Jacobian: dL/dz_j = p_j (dL/dp_j − Σ_c p_c dL/dp_c)
        inner = np.sum(probs * d_loss_d_p, axis=1, keepdims=True)
        grad = probs * (d_loss_d_p - inner)
        bottom[0].diff[...] = grad * float(np.asarray(top[0].diff).ravel()[0])


class SegmentationMetrics(caffe.Layer):
    """Confusion-matrix metrics of the argmax prediction, cheap enough to leave on in training.

    Tops (give any leading subset, in this order):
      0 pixel_accuracy        Σ diag / Σ all                                   shape (1,)
      1 mean_accuracy         mean over classes present in the label of recall shape (1,)
      2 mean_iou              mean IoU over classes present in label or prediction (1,)
      3 fw_iou                Σ_c freq_c · IoU_c, freq = label share of class c  (1,)
      4 per_class_iou         IoU of every class                                (C,)
      5 per_class_dice        Dice of every class                               (C,)

    The confusion matrix is that of the current batch (one np.bincount); a test pass reports
    the mean of per-batch values, as DIGITS does for every metric.

    Empty cases, chosen to avoid NaN in the charts: a class absent from both label and
    prediction gets IoU 1.0 and Dice 1.0 in the per-class tops and is left out of the means
    (as FCN's score.py does with nanmean). A batch with no valid pixel reports 1.0 for every
    scalar. Options: ``ignore_label`` (default 255); labels outside 0..C−1 are ignored too.
    """

    OPTIONS = {"ignore_label": DEFAULT_IGNORE_LABEL}
    TOP_NAMES = ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou",
                 "per_class_iou", "per_class_dice")

    def setup(self, bottom, top):
        name = type(self).__name__
        self.options = parse_param_str(getattr(self, "param_str", ""), self.OPTIONS, name)
        if len(bottom) != 2:
            raise ValueError("%s: needs two bottoms (score, label), got %d" % (name, len(bottom)))
        if not 1 <= len(top) <= len(self.TOP_NAMES):
            raise ValueError("%s: takes 1 to %d tops (%s), got %d"
                             % (name, len(self.TOP_NAMES), ", ".join(self.TOP_NAMES), len(top)))

    def reshape(self, bottom, top):
        n, c, h, w = check_score_and_label(bottom, "SegmentationMetrics")
        self.num_classes = c
        # Indexed, not iterated: real pycaffe's blob vectors support len() and [i] only
        # (iterating raises "No to_python (by-value) converter found for caffe::Blob<float>*").
        for index in range(len(top)):
            top[index].reshape(c if index >= 4 else 1)

    def forward(self, bottom, top):
        values = segmentation_metrics(channel_argmax(bottom[0].data),
                                      labels_of(bottom[1].data, "SegmentationMetrics"),
                                      self.num_classes, int(self.options["ignore_label"]))
        for index in range(len(top)):
            top[index].data[...] = values[self.TOP_NAMES[index]]

    def backward(self, top, propagate_down, bottom):
        pass


def confusion_matrix(prediction, labels, num_classes, ignore_label=DEFAULT_IGNORE_LABEL):
    """hist[i, j] = number of valid pixels labelled i and predicted j (one bincount)."""
    labels = np.asarray(labels).ravel()
    prediction = np.asarray(prediction).ravel()
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    flat = num_classes * labels[valid] + prediction[valid]
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(prediction, labels, num_classes, ignore_label=DEFAULT_IGNORE_LABEL):
    """All SegmentationMetrics values as a dict of float64 arrays (see the layer's docstring)."""
    hist = confusion_matrix(prediction, labels, num_classes, ignore_label).astype(np.float64)
    total = hist.sum()
    diag = np.diag(hist)
    label_count = hist.sum(axis=1)
    predicted_count = hist.sum(axis=0)
    union = label_count + predicted_count - diag
    present = union > 0
    in_label = label_count > 0

    iou = np.where(present, diag / np.where(present, union, 1.0), 1.0)
    dice = dice_ratio(diag, label_count, predicted_count)
    if total == 0:
        scalars = (1.0, 1.0, 1.0, 1.0)
    else:
        recall = diag[in_label] / label_count[in_label]
        frequency = label_count / total
        scalars = (diag.sum() / total, recall.mean(), iou[present].mean(), np.sum(frequency * iou * in_label))
    result = dict(zip(SegmentationMetrics.TOP_NAMES[:4], [np.array([v]) for v in scalars]))
    result["per_class_iou"] = iou
    result["per_class_dice"] = dice
    return result
