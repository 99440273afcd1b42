# caffeseg-engine-proxy
"""``import caffe`` for a Caffe user's own script: the caffeseg engine, when no real pycaffe is
earlier on the path (see engine/caffe_shim.py). Importing this replaces itself in
``sys.modules`` by the ``engine`` package, so ``import caffe`` returns the engine."""
__caffeseg_proxy__ = True

import sys as _sys

from caffeseg.engine import caffe_shim as _caffe_shim

_caffe_shim.install(replacing=_sys.modules[__name__])
