"""Sunnybrook LV segmentation data plugin (LV Segmentation Challenge release layout)."""

from plugin.sunnybrook.plugin import SunnybrookPlugin

__all__ = ["SunnybrookPlugin"]
