"""``caffe.Detector``: classify windows of images (R-CNN style, pycaffe's convenience class).

Each window ``(ymin, xmin, ymax, xmax)`` is cut from its image, optionally with
``context_pad`` pixels of surrounding context (scaled to the net's input; parts outside the
image are filled with the mean in raw input space), warped to the input size, preprocessed
and run with ``forward_all``.
"""
from __future__ import annotations

import os

import numpy as np

from caffeseg.engine import io as caffe_io
from caffeseg.engine.classifier import configured_transformer
from caffeseg.engine.net import TEST, Net


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        if not self.inputs:
            raise ValueError(f"{model_file}: a Detector needs a net with an input (Input layer)")
        self.transformer = configured_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """``[(image filename, [window, ...]), ...]`` -> a list of ``{'window', 'prediction',
        'filename'}`` dicts, one per window, in order."""
        images_windows = [(name, list(windows)) for name, windows in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = caffe_io.load_image(filename).astype(np.float32)
            crops += [self.crop(image, window) for window in windows]
        if not crops:
            return []
        name = self.inputs[0]
        net_in = np.zeros((len(crops), crops[0].shape[2]) + tuple(self.blobs[name].data.shape[2:]),
                          dtype=np.float32)
        for i, crop in enumerate(crops):
            net_in[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: net_in})[self.outputs[0]]
        detections, i = [], 0
        for filename, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[i], "filename": filename})
                i += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Windows from Selective Search (the external ``selective_search_ijcv_with_python``
        package and its MATLAB code, as in pycaffe), then ``detect_windows``."""
        import selective_search_ijcv_with_python as selective_search
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The H×W×K window of ``im`` (``ymin, xmin, ymax, xmax``), with context if configured."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        size = self.blobs[self.inputs[0]].width  # square inputs, as pycaffe assumes
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0, -box[0]) * scale_h))  # rows that fall outside the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise ValueError(f"window {tuple(window)} lies outside the {im_h}x{im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), size - pad_x)
        context = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        context = caffe_io.resize_image(context, (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Set the crop size (the input's H×W×K) and, with context, the raw-space mean that
        fills context outside the image."""
        name = self.inputs[0]
        inverse = list(np.argsort(self.transformer.transpose[name]))
        self.crop_dims = np.array(self.blobs[name].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(name)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inverse)
        channel_order = self.transformer.channel_swap.get(name)
        if channel_order is not None:
            crop_mean = crop_mean[:, :, [list(channel_order).index(i) for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(name)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
