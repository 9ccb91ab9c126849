"""Datasets on disk in the VOC layout (VOC, converted COCO, the synthetic demo)."""
