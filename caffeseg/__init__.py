"""caffeseg's composition root: the ``caffeseg`` command line (``caffeseg.cli``).

It sits above every other package: it drives ``jobs`` (the service, the scheduler) and, for
``caffeseg serve``, builds the ``web`` app. Nothing below imports it, so data and imports flow
one way (plugin → jobs → web → caffeseg). The Python-3.9 worker of the pycaffe image is
``python3 -m jobs.worker`` and needs nothing from here.
"""
