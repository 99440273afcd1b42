"""The Standard Networks as package data (``*.prototxt`` and ``README.md``); no code.

A package only so that ``importlib.resources`` finds these files in a wheel install as in a
checkout: use ``jobs.resources.networks_dir()``.
"""
