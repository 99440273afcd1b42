"""caffeseg: one package, whose subpackages are the project's folders.

``caffeseg.engine`` is ``engine/``, ``caffeseg.jobs`` is ``jobs/``, and likewise ``plugin``,
``web``, ``prototxt`` and ``python_layers``: the folders stay at the top of the checkout, where
a user looks for them, and install inside this package (pyproject's ``package-dir``), so no
generic name (``web``, ``jobs``) lands at the top of site-packages. The only other top-level
package installed is the ``caffe`` proxy (``engine/pycaffe_proxy/caffe``).

In a checkout the folders sit beside this package rather than in it: the package's search path
then also holds the checkout's root, so ``caffeseg.jobs`` resolves to ``jobs/`` the same way for
the venv, for a plain ``PYTHONPATH`` (the runner under Debian's Python with real pycaffe) and for
a wheel.

This package's own modules are the composition root: the command line (``caffeseg.cli``)
drives ``caffeseg.jobs`` and, for ``caffeseg serve``, builds the ``caffeseg.web`` app; nothing
below imports them. Python 3.9, standard library only here: the pycaffe image's worker
(``python3 -m caffeseg.jobs.worker``) imports this file.
"""
import os as _os

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_os.path.isfile(_os.path.join(_checkout, "pyproject.toml"))
        and _os.path.isfile(_os.path.join(_checkout, "jobs", "__init__.py"))
        and not _os.path.isdir(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "jobs"))):
    __path__.append(_checkout)  # noqa: F821  (a package's __path__)
