"""Writing videos: clips ``[F, 3, H, W]`` in [0, 1] -> H.264 MP4 files (PyAV, the ``av`` package, whose
wheels bundle FFmpeg with libx264) that browsers play in a ``<video>`` element.

Frames are quantised to 8 bits first and the MP4 is written ``yuv420p`` with ``+faststart`` (the index
at the front, so a page can start playing before the whole file is read). Sizes are padded to even
numbers (4:2:0 chroma needs them) by repeating the last row / column. H.264 is lossy: rewards score the
8-bit frames (what ``save_video`` returns), not frames decoded back from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

VIDEO_SUFFIX = ".mp4"


def is_video(x: Any) -> bool:
    """One clip [F, 3, H, W] rather than one image [3, H, W]."""
    return getattr(x, "ndim", 0) == 4 and x.shape[-3] == 3


def save_video(video: Any, path: Path, fps: int = 8) -> Any:
    """Clip [F, 3, H, W] in [0, 1] -> an MP4 at ``path`` (written atomically); returns the saved
    8-bit frames as [F, 3, H, W] float in [0, 1]."""
    import numpy as np
    import torch

    try:
        import av
    except ImportError as err:  # a declared dependency; one clear error where an install lacks it
        raise ImportError(f"writing videos needs PyAV: pip install av ({err})") from None
    frames = (video.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    h, w = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for arr in padded:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        out.mux(stream.encode())
    os.replace(tmp, path)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
