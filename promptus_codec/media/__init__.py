"""Video in and out: frame readers, frame writers, and the source geometry (spec §3.3).

PyAV (the ``media`` extra) is imported only when a function needs it, so importing this
package, and planning geometry, works with the base install.
"""

from promptus_codec.media.color import rgb_to_yuv
from promptus_codec.media.geometry import apply_geometry, plan_geometry, resize, restore_geometry
from promptus_codec.media.readers import VideoSource, open_video
from promptus_codec.media.writers import (
    FrameWriter,
    Mp4Writer,
    PngDirWriter,
    Y4MWriter,
    open_writer,
)

__all__ = [
    "FrameWriter",
    "Mp4Writer",
    "PngDirWriter",
    "VideoSource",
    "Y4MWriter",
    "apply_geometry",
    "open_video",
    "open_writer",
    "plan_geometry",
    "resize",
    "restore_geometry",
    "rgb_to_yuv",
]
