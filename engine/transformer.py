"""Caffe's ``DataTransformer`` for ``TransformationParameter``: mirror drawn in both phases, random
crops in TRAIN and the centre in TEST, ``(x − mean)·scale`` with ``mean_file`` at the uncropped position.

Per item, in Caffe's order:

1. random draws from the transformer's own generator: ``do_mirror = mirror and rand() % 2``
   (drawn in TRAIN *and* TEST), then, for TRAIN with ``crop_size``, ``h_off`` and ``w_off``;
2. crop offsets: random in TRAIN, centre ``(H - crop) // 2`` in TEST, 0 without crop;
3. ``out[c, h, w'] = (in[c, h_off + h, w_off + w] - mean) * scale`` with ``w'`` flipped when
   mirrored; a ``mean_file`` is indexed at the *uncropped* source position.

The transformer works on numpy C x H x W arrays (the Data layer's prefetch thread runs it
off the device); results are float32.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from caffeseg.engine import rng
from caffeseg.engine.proto import caffe_pb2


class TransformError(ValueError):
    """Bad transform_param or an item that does not fit it; the message names the layer."""


class Transformer:
    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int,
                 where: str = "transform_param", base_dir: str | None = None):
        self.param = param
        self.phase = phase
        self.where = where
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop = int(param.crop_size)
        if param.force_color and param.force_gray:
            raise TransformError(f"{where}: force_color and force_gray cannot both be set")
        if param.HasField("mean_file") and len(param.mean_value):
            raise TransformError(f"{where}: cannot specify mean_file and mean_value at the same time")
        self.mean_blob = None
        if param.HasField("mean_file"):
            from caffeseg.engine.blobproto import read_binaryproto
            path = param.mean_file
            if base_dir and not os.path.isabs(path):
                path = os.path.join(base_dir, path)
            mean = read_binaryproto(path)
            # Caffe's mean blob is 1 x C x H x W; drop leading axes of size 1
            while mean.ndim > 3 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise TransformError(f"{where}: mean_file {path} has shape {mean.shape}, expected 1 x C x H x W")
            self.mean_blob = mean.astype(np.float32)
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        # Caffe creates the RNG only when something random can happen; seeding it from the
        # engine generator keeps runs reproducible under caffe.set_random_seed.
        self.needs_rng = self.mirror or (phase == caffe_pb2.TRAIN and self.crop > 0)
        self._gen = None
        if self.needs_rng:
            seed = int(torch.randint(0, 2**62, (1,), generator=rng.generator("cpu")))
            self._gen = np.random.default_rng(seed)

    def _rand(self, n: int) -> int:
        return int(self._gen.integers(0, n))

    def output_shape(self, chw: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = chw
        if self.crop:
            if h < self.crop or w < self.crop:
                raise TransformError(f"{self.where}: crop_size {self.crop} is larger than the item ({h} x {w})")
            return (c, self.crop, self.crop)
        return (c, h, w)

    def draw(self, h: int, w: int) -> tuple[bool, int, int]:
        """(mirror, h_off, w_off) for one item, drawn in Caffe's order."""
        do_mirror = self.mirror and self._rand(2) == 1
        h_off = w_off = 0
        if self.crop:
            if self.phase == caffe_pb2.TRAIN:
                h_off = self._rand(h - self.crop + 1)
                w_off = self._rand(w - self.crop + 1)
            else:
                h_off = (h - self.crop) // 2
                w_off = (w - self.crop) // 2
        return do_mirror, h_off, w_off

    def __call__(self, item: np.ndarray) -> np.ndarray:
        """Transform one C x H x W item into a float32 array."""
        c, h, w = item.shape
        out_c, out_h, out_w = self.output_shape((c, h, w))
        x = item.astype(np.float32)
        if self.mean_blob is not None:
            if self.mean_blob.shape != (c, h, w):
                raise TransformError(
                    f"{self.where}: mean_file shape {self.mean_blob.shape} does not match the item {(c, h, w)}")
            x = x - self.mean_blob
        elif len(self.mean_values):
            if len(self.mean_values) not in (1, c):
                raise TransformError(
                    f"{self.where}: mean_value needs 1 or {c} values (one per channel), got {len(self.mean_values)}")
            means = np.broadcast_to(self.mean_values, (c,)) if len(self.mean_values) == 1 else self.mean_values
            x = x - means.reshape(c, 1, 1)
        do_mirror, h_off, w_off = self.draw(h, w) if (self.needs_rng or self.crop) else (False, 0, 0)
        # Subtracting the full-size mean before cropping is Caffe's "mean at the uncropped position"
        x = x[:, h_off:h_off + out_h, w_off:w_off + out_w]
        if do_mirror:
            x = x[:, :, ::-1]
        if self.scale != 1:
            x = x * np.float32(self.scale)
        return np.ascontiguousarray(x, dtype=np.float32)
