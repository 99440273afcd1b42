"""Caffe Python layers shipped with caffeseg.

Prototxts name the module as DIGITS does (``python_param { module: "digits_python_layers" }``),
so this folder itself, not the package, has to be on ``sys.path`` when a net is built:
call :func:`add_to_sys_path` (the job runner does) or copy ``digits_python_layers.py`` next to
a real pycaffe install. The module needs only numpy and ``caffe.Layer`` and runs on Python 3.9.
"""
import os
import sys

PYTHON_LAYER_DIR = os.path.dirname(os.path.abspath(__file__))
PYTHON_LAYER_FILE = os.path.join(PYTHON_LAYER_DIR, "digits_python_layers.py")


def add_to_sys_path():
    """Make ``import digits_python_layers`` work; returns the folder added."""
    if PYTHON_LAYER_DIR not in sys.path:
        sys.path.insert(0, PYTHON_LAYER_DIR)
    return PYTHON_LAYER_DIR
