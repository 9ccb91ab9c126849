"""L2G weakly supervised semantic segmentation pipeline."""

__version__ = "0.1.0"
