"""Video data: the synthetic action set, video folders, clip decoding, media probes and the clip
dataset."""

from kdsearch.data.frames import FRAME_EXTENSIONS, list_frames, read_frame_files
from kdsearch.data.probe import MediaInfo, probe_frames, probe_video
from kdsearch.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic, write_video
from kdsearch.data.video import (
    VIDEO_EXTENSIONS,
    DecodeError,
    VideoClipDataset,
    VideoRecord,
    clip_indices,
    read_video_frames,
)

__all__ = [
    "FRAME_EXTENSIONS",
    "SYNTHETIC_CLASSES",
    "VIDEO_EXTENSIONS",
    "DecodeError",
    "MediaInfo",
    "VideoClipDataset",
    "VideoRecord",
    "clip_indices",
    "generate_synthetic",
    "list_frames",
    "probe_frames",
    "probe_video",
    "read_frame_files",
    "read_video_frames",
    "write_video",
]
