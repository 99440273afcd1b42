"""Where caffeseg's shipped files are: the one place that knows.

* the Standard Networks: ``prototxt/*.prototxt`` and its ``README.md`` (package ``prototxt``);
* the lab's Python layers: ``python_layers/*.py`` (package ``python_layers``);
* the import root: the folder from which the ``caffeseg`` package is imported, which a process
  we start with another interpreter (the runner under real pycaffe) gets on its ``PYTHONPATH``.

Files are found with ``importlib.resources`` over the packages, never by walking up from a
module, so a checkout, an editable install, a wheel install (``pip install .``, the app image)
and the pycaffe image (the folders copied to /opt/caffeseg) find them the same way. The packages
must be on disk (not zipped): Caffe and the runner open these files by path.

Python 3.9 and the standard library only: the runner's worker image imports it.
"""
import os
from importlib import resources

NETWORKS_PACKAGE = "caffeseg.prototxt"
PYTHON_LAYERS_PACKAGE = "caffeseg.python_layers"
NETWORKS_README = "README.md"


def _package_dir(package):
    folder = resources.files(package)
    if not isinstance(folder, os.PathLike) or not os.path.isdir(folder):
        raise RuntimeError("package %s is not a folder on disk (%s); install caffeseg unzipped"
                           % (package, folder))
    return os.fspath(folder)


def networks_dir():
    """The folder of the Standard Networks (``<name>.prototxt`` files and ``README.md``)."""
    return _package_dir(NETWORKS_PACKAGE)


def network_path(name):
    """The file of Standard Network ``name`` (``fcn_alexnet`` or ``fcn_alexnet.prototxt``); it
    may not exist. Only a plain file name is accepted, so a name cannot reach another folder."""
    base = name if name.endswith(".prototxt") else name + ".prototxt"
    if os.path.basename(base) != base or base.startswith("."):
        raise ValueError("a standard network is named by its file name, not %r" % name)
    return os.path.join(networks_dir(), base)


def python_layers_dir():
    """The folder of the lab's Python layer modules (e.g. ``digits_python_layers.py``)."""
    return _package_dir(PYTHON_LAYERS_PACKAGE)


def python_layer_file(module):
    """The shipped file of Python layer module ``module``, or None if none ships."""
    path = os.path.join(python_layers_dir(), module + ".py")
    return path if module.isidentifier() and os.path.isfile(path) else None


def import_root():
    """The folder holding the ``caffeseg`` package (a checkout's root, or site-packages in a wheel
    install): what a child process needs on ``PYTHONPATH`` to import ``caffeseg.jobs``,
    ``caffeseg.engine`` and the rest."""
    import caffeseg
    return os.path.dirname(os.path.dirname(os.path.abspath(caffeseg.__file__)))
