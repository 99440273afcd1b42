"""``caffe.Classifier``: a deploy net that classifies H×W×K images (pycaffe's convenience class).

Images are resized to ``image_dims``, cut into the net's input size (center crop, or with
``oversample`` the ten crops of ``caffe.io.oversample`` whose predictions are averaged),
preprocessed by a ``caffe.io.Transformer`` (H×W×K -> K×H×W, then raw scale, mean, input scale,
channel swap as configured) and run in batches with ``forward_all``.
"""
from __future__ import annotations

import numpy as np

from caffeseg.engine import io as caffe_io
from caffeseg.engine.net import TEST, Net


def configured_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """A Transformer for the net's first input, H×W×K images in, as pycaffe's helpers set it."""
    name = net.inputs[0]
    transformer = caffe_io.Transformer({name: net.blobs[name].data.shape})
    transformer.set_transpose(name, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(name, mean)
    if input_scale is not None:
        transformer.set_input_scale(name, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(name, channel_swap)
    return transformer


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: the net in TEST phase with those weights."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        if not self.inputs:
            raise ValueError(f"{model_file}: a Classifier needs a net with an input (Input layer)")
        self.transformer = configured_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) else image_dims

    def predict(self, inputs, oversample=True):
        """Class probabilities, N×C, for the N images in ``inputs`` (each H×W×K)."""
        if not len(inputs):
            raise ValueError("predict() needs at least one image")
        channels = inputs[0].shape[2]
        resized = np.zeros((len(inputs), int(self.image_dims[0]), int(self.image_dims[1]), channels),
                           dtype=np.float32)
        for i, image in enumerate(inputs):
            resized[i] = caffe_io.resize_image(image, self.image_dims)
        if oversample:
            crops = caffe_io.oversample(resized, self.crop_dims)
        else:
            center = np.array(self.image_dims, dtype=float) / 2.0
            half = self.crop_dims / 2.0
            y0, x0 = (int(v) for v in center - half)
            y1, x1 = (int(v) for v in center + half)
            crops = resized[:, y0:y1, x0:x1, :]
        name = self.inputs[0]
        net_in = np.zeros((len(crops), crops.shape[3], crops.shape[1], crops.shape[2]), dtype=np.float32)
        for i, crop in enumerate(crops):
            net_in[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: net_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
