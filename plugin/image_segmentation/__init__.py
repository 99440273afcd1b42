"""DIGITS' generic Image Segmentation data plugin (feature + label image folders)."""

from caffeseg.plugin.image_segmentation.plugin import ImageSegmentationPlugin

__all__ = ["ImageSegmentationPlugin"]
