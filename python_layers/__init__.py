"""Caffe Python layers shipped with caffeseg (``digits_python_layers``: Dice, DiceLoss,
SegmentationMetrics).

Prototxts name the module as DIGITS does (``python_param { module: "digits_python_layers" }``),
so this folder itself, not the package, is searched when a net is built: a model job gets a copy
of the file in its folder (``jobs.model_job``), the engine's Python layer also looks here, and
for a real pycaffe install copy ``digits_python_layers.py`` onto its ``PYTHONPATH``. The folder is
found with ``jobs.resources.python_layers_dir()``. The module needs only numpy and
``caffe.Layer`` and runs on Python 3.9.
"""
