"""Video data: the synthetic action set, video folders, clip decoding and the clip dataset."""

from kdsearch.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic, write_video
from kdsearch.data.video import (
    VIDEO_EXTENSIONS,
    VideoClipDataset,
    VideoRecord,
    count_frames,
    read_clip,
    scan_video_folder,
)

__all__ = [
    "SYNTHETIC_CLASSES",
    "VIDEO_EXTENSIONS",
    "VideoClipDataset",
    "VideoRecord",
    "count_frames",
    "generate_synthetic",
    "read_clip",
    "scan_video_folder",
    "write_video",
]
