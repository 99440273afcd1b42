"""Shared test helpers: the BVLC Caffe golden cases (tests/golden, see its README)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


class GoldenCase:
    """One folder of tests/golden/layers or tests/golden/nets."""

    def __init__(self, folder: str):
        self.folder = folder
        self.name = os.path.basename(folder)
        with open(os.path.join(folder, "case.json")) as f:
            self.info = json.load(f)
        with np.load(os.path.join(folder, "io.npz")) as arrays:
            self.io = {key: arrays[key] for key in arrays.files}

    @property
    def prototxt(self) -> str:
        return os.path.join(self.folder, "net.prototxt")

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    @property
    def phase_name(self) -> str:
        return self.info["phase"]

    def keys(self, prefix: str) -> dict:
        """``{rest of key: array}`` for every io key starting with ``prefix:``."""
        start = prefix + ":"
        return {k[len(start):]: v for k, v in self.io.items() if k.startswith(start)}


def golden_case_names(kind: str) -> list[str]:
    root = os.path.join(GOLDEN_DIR, kind)
    return sorted(c for c in os.listdir(root) if os.path.isfile(os.path.join(root, c, "case.json")))


def load_golden(kind: str, name: str) -> GoldenCase:
    return GoldenCase(os.path.join(GOLDEN_DIR, kind, name))


def assert_close_to_caffe(actual, expected, what: str) -> None:
    """The golden tolerance: atol = 1e-4 · max|expected| per array, shapes equal."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != Caffe's {expected.shape}"
    atol = 1e-4 * max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= atol, f"{what}: max error {err:.3g} > atol {atol:.3g}"


@pytest.fixture
def golden():
    """``golden(kind, name)`` → GoldenCase."""
    return load_golden
