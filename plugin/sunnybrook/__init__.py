"""Sunnybrook LV segmentation data plugin (LV Segmentation Challenge release layout)."""

from caffeseg.plugin.sunnybrook.plugin import SunnybrookPlugin

__all__ = ["SunnybrookPlugin"]
