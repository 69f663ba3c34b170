"""Video data: media helpers, decoding (videos and frame folders), probes, the index, folder
and list layouts, the clip dataset with its splits, and the synthetic action set.

Owns: everything between the user's files and a batch of clips.
May import: :mod:`kdsearch.storage`, and :mod:`kdsearch.config` in ``dataset`` (the data
section of the space file). Never the models, training, search or tracking.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names re-exported lazily (PEP 562), so that importing one light module (``layouts``,
# ``media``) does not load PyAV and torch through this package.
_EXPORTS = {
    "read_video_frames": "decode",
    "list_frames": "frames", "read_frame_files": "frames",
    "FRAME_EXTENSIONS": "media", "VIDEO_EXTENSIONS": "media", "DecodeError": "media",
    "clip_indices": "media",
    "MediaInfo": "probe", "probe_frames": "probe", "probe_video": "probe",
    "SYNTHETIC_CLASSES": "synthetic", "generate_synthetic": "synthetic",
    "write_video": "synthetic",
    "VideoClipDataset": "video", "VideoRecord": "video",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"kdsearch.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kdsearch.data' has no attribute {name!r}")


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
