"""Caffe's weight fillers (``FillerParameter``, chosen by its ``type`` string), producing float32 CPU tensors.

Random fillers draw from the engine RNG (``engine.rng``), so ``set_random_seed`` makes them
reproducible; the values cannot match Caffe's boost mt19937 stream bit for bit, only in
distribution. Deterministic fillers (constant, bilinear) match Caffe exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from caffeseg.engine import rng
from caffeseg.engine.proto import caffe_pb2


class FillerError(ValueError):
    """A FillerParameter that Caffe would reject."""


def _fans(shape: Sequence[int]) -> tuple[float, float]:
    """Caffe's fan_in = count/shape[0]; fan_out = count/shape[1] (count for a 1-axis blob)."""
    count = math.prod(shape)
    if not shape or shape[0] == 0:
        raise FillerError(f"cannot compute fans of a blob with shape {tuple(shape)}")
    fan_in = count / shape[0]
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(filler: caffe_pb2.FillerParameter, shape: Sequence[int]) -> float:
    fan_in, fan_out = _fans(shape)
    norm = filler.variance_norm
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def bilinear_kernel(size: int) -> torch.Tensor:
    """The K×K upsampling kernel Caffe's bilinear filler writes (f = ceil(K/2), c = (K-1)/(2f))."""
    f = math.ceil(size / 2.0)
    c = (size - 1) / (2.0 * f)
    pos = torch.arange(size, dtype=torch.float64)
    profile = 1.0 - torch.abs(pos / f - c)
    return torch.outer(profile, profile).to(torch.float32)


def fill(filler: caffe_pb2.FillerParameter | None, shape: Sequence[int],
         generator: torch.Generator | None = None) -> torch.Tensor:
    """A new float32 CPU tensor of ``shape`` filled as Caffe's ``filler`` would fill it."""
    if filler is None:
        filler = caffe_pb2.FillerParameter()  # Caffe's default filler: constant 0 (a layer without weight_filler starts at zeros)
    shape = tuple(int(d) for d in shape)
    gen = generator if generator is not None else rng.generator("cpu")
    kind = filler.type
    if kind == "constant":
        if filler.sparse != -1:
            raise FillerError("constant filler: sparse must be -1")
        return torch.full(shape, float(filler.value), dtype=torch.float32)
    if kind == "uniform":
        if filler.min > filler.max:
            raise FillerError(f"uniform filler: min {filler.min} > max {filler.max}")
        out = torch.empty(shape, dtype=torch.float32)
        return out.uniform_(filler.min, filler.max, generator=gen)
    if kind == "gaussian":
        if not filler.std > 0:
            raise FillerError(f"gaussian filler: std must be > 0, got {filler.std}")
        out = torch.empty(shape, dtype=torch.float32).normal_(filler.mean, filler.std, generator=gen)
        if filler.sparse >= 0:
            if len(shape) < 1 or shape[0] == 0:
                raise FillerError("sparse gaussian filler needs a blob with at least one axis")
            keep = min(1.0, filler.sparse / shape[0])
            mask = torch.empty(shape, dtype=torch.float32).bernoulli_(keep, generator=gen)
            out *= mask
        return out
    if kind == "xavier":
        bound = math.sqrt(3.0 / _variance_n(filler, shape))
        return torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
    if kind == "msra":
        std = math.sqrt(2.0 / _variance_n(filler, shape))
        return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
    if kind == "positive_unitball":
        out = torch.empty(shape, dtype=torch.float32).uniform_(0.0, 1.0, generator=gen)
        flat = out.reshape(shape[0], -1)
        flat /= flat.sum(dim=1, keepdim=True)
        return flat.reshape(shape)
    if kind == "bilinear":
        if len(shape) != 4:
            raise FillerError(f"bilinear filler needs a 4-D blob, got shape {shape}")
        if shape[2] != shape[3]:
            raise FillerError(f"bilinear filler needs a square kernel, got {shape[2]}x{shape[3]}")
        kernel = bilinear_kernel(shape[3])
        return kernel.expand(shape).contiguous()
    raise FillerError(f"unknown filler type '{kind}' (known: constant, uniform, gaussian, "
                      "xavier, msra, positive_unitball, bilinear)")
