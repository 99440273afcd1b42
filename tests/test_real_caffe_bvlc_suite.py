"""BVLC's own pycaffe test suite (python/caffe/test/ of the pinned commit) passes on the real
Caffe `make caffe` built: a control that the build is sound, and that a harness running the
same suite against the engine compares with a genuine Caffe.

The suite comes from the build's cache folder (docker/build_caffe.sh keeps it beside the install
in pycaffe-tests/, laid out as in the source with the prototxt files of models/ and examples/,
which the caffe.draw test draws); it runs with unittest under the build's interpreter, in a
scratch copy (the tests write temporary files next to themselves). caffe.draw's test needs pydot and
graphviz, which `make caffe` installs from Debian.
"""
import os
import re
import shutil

import pytest

from tests.real_caffe_helpers import real_caffe, run_python


@pytest.mark.timeout(900)
def test_bvlc_pycaffe_suite_passes(tmp_path):
    found = real_caffe()
    prefix = os.path.dirname(found.pythonpath or "")
    suite = os.path.join(prefix, "pycaffe-tests")
    if not os.path.isdir(suite):
        pytest.skip("no pycaffe-tests/ beside %s (a Caffe not built by `make caffe`)" % found.pythonpath)
    tree = shutil.copytree(suite, str(tmp_path / "caffe"))
    tests = os.path.join(tree, "python", "caffe", "test")
    assert os.path.isdir(os.path.join(tree, "models")) and os.path.isdir(os.path.join(tree, "examples"))
    proc = run_python(["-m", "unittest", "discover", "-s", tests, "-t", tests, "-p", "test_*.py", "-v"],
                      cwd=tests, timeout=800, PYTHONDONTWRITEBYTECODE="1")
    report = proc.stderr
    ran = re.search(r"^Ran (\d+) tests? in", report, re.M)
    assert ran and report.rstrip().splitlines()[-1].startswith("OK"), report[-4000:]
    names = re.findall(r"^(test\w+) \(", report, re.M)
    assert int(ran.group(1)) == len(names) >= 50
    assert "test_draw_net" in names, "caffe.draw was not tested"
    skipped = re.findall(r"^(test\w+) \(.*\) \.\.\. skipped (.*)$", report, re.M)
    assert not skipped, "skipped: %s" % skipped
