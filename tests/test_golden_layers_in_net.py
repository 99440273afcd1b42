"""Every single-layer golden case from BVLC Caffe, run through the whole ``engine.Net``:
forward blobs, input diffs, parameter diffs and BatchNorm statistics must match Caffe's."""
from __future__ import annotations

import pytest

from conftest import check_case, golden_case_names, load_golden

CASES = golden_case_names("layers")


def test_cases_are_present():
    assert len(CASES) >= 40
    assert {"split_implicit", "inplace_chain", "shared_params", "python_layer"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_layer_case_through_net(name):
    check_case(load_golden("layers", name))
