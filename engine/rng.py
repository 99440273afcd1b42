"""Caffe's process-wide random number generator (``caffe.set_random_seed``).

Fillers, Dropout, random crops and mirrors all draw from here, so one seed makes a run
reproducible on a given device.
"""
from __future__ import annotations

import torch

_generators: dict[str, torch.Generator] = {}
_seed: int | None = None


def set_seed(seed: int) -> None:
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(device: torch.device | str = "cpu") -> torch.Generator:
    """The engine's generator for ``device`` (created on first use, seeded when a seed is set)."""
    key = str(torch.device(device))
    gen = _generators.get(key)
    if gen is None:
        gen = torch.Generator(device=key)
        if _seed is not None:
            gen.manual_seed(_seed)
        else:
            gen.seed()
        _generators[key] = gen
    return gen
