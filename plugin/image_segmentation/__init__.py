"""DIGITS' generic Image Segmentation data plugin (feature + label image folders)."""

from plugin.image_segmentation.plugin import ImageSegmentationPlugin

__all__ = ["ImageSegmentationPlugin"]
