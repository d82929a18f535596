"""The decode-order rules of format_spec.md §5, as one state machine.

The reader feeds it every record it parses, the writer every record it is asked to write,
so a file the writer produced is always one the reader accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from promptus_codec.container.records import (
    EndRecord,
    FileHeader,
    KeyframeRecord,
    ReconThumbnailRecord,
    Record,
    SceneRecord,
    SeekIndexRecord,
)
from promptus_codec.errors import RecordOrderError


@dataclass
class DecodeOrder:
    """Tracks scenes and keyframes as records arrive; raises RecordOrderError on a break."""

    header: FileHeader
    scene_count: int = 0
    keyframe_count: int = 0
    last_keyframe: int | None = None  # frame index of the newest keyframe
    scene_first_frame: int | None = None  # first frame of the open scene
    scene_has_keyframe: bool = False
    scene_offsets: list[tuple[int, int]] = field(default_factory=list)  # (first_frame, byte offset)
    seek_index_offset: int = 0
    thumbnail_frame: int | None = None  # keyframe that already has its ReconThumbnail
    end: EndRecord | None = None

    @property
    def frames_complete(self) -> int:
        """Frames decodable so far: up to and including the newest keyframe."""
        return 0 if self.last_keyframe is None else self.last_keyframe + 1

    def accept(self, record: Record, offset: int | None = None) -> None:
        """Check ``record`` (which starts at byte ``offset``) against the records before it."""
        if self.end is not None:
            raise RecordOrderError("a record follows the End record", offset)
        if isinstance(record, SceneRecord):
            self._scene(record, offset)
        elif isinstance(record, KeyframeRecord):
            self._keyframe(record, offset)
        elif isinstance(record, EndRecord):
            self._end(record, offset)
        elif isinstance(record, SeekIndexRecord):
            self._seek_index(record, offset)
        elif isinstance(record, ReconThumbnailRecord):
            self._recon_thumbnail(record, offset)

    def _scene(self, r: SceneRecord, offset: int | None) -> None:
        if self.scene_count and not self.scene_has_keyframe:
            raise RecordOrderError(f"scene at frame {self.scene_first_frame} has no keyframe", offset)
        if r.first_frame != self.frames_complete:
            raise RecordOrderError(
                f"scene starts at frame {r.first_frame}, expected {self.frames_complete} "
                "(the frame after the previous keyframe)",
                offset,
            )
        self.scene_count += 1
        self.scene_first_frame = r.first_frame
        self.scene_has_keyframe = False
        self.scene_offsets.append((r.first_frame, offset or 0))

    def _keyframe(self, r: KeyframeRecord, offset: int | None) -> None:
        if self.scene_first_frame is None:
            raise RecordOrderError("a keyframe comes before the first scene", offset)
        if not self.scene_has_keyframe and r.frame_index != self.scene_first_frame:
            raise RecordOrderError(
                f"the first keyframe of a scene must be its first frame {self.scene_first_frame}, not {r.frame_index}",
                offset,
            )
        if self.header.frame_count and r.frame_index >= self.header.frame_count:
            raise RecordOrderError(
                f"keyframe {r.frame_index} lies beyond the header's frame_count {self.header.frame_count}", offset
            )
        if self.last_keyframe is not None and r.frame_index <= self.last_keyframe:
            raise RecordOrderError(f"keyframe {r.frame_index} does not follow keyframe {self.last_keyframe}", offset)
        self.keyframe_count += 1
        self.last_keyframe = r.frame_index
        self.scene_has_keyframe = True

    def _recon_thumbnail(self, r: ReconThumbnailRecord, offset: int | None) -> None:
        if r.frame_index != self.last_keyframe:
            latest = "there is none yet" if self.last_keyframe is None else f"it is {self.last_keyframe}"
            raise RecordOrderError(
                f"ReconThumbnail of frame {r.frame_index} does not follow that frame's Keyframe "
                f"(it must belong to the latest keyframe; {latest})",
                offset,
            )
        if self.thumbnail_frame == r.frame_index:
            raise RecordOrderError(f"a second ReconThumbnail for keyframe {r.frame_index}", offset)
        self.thumbnail_frame = r.frame_index

    def _seek_index(self, r: SeekIndexRecord, offset: int | None) -> None:
        listed = [(e.frame_index, e.byte_offset) for e in r.entries]
        if listed != self.scene_offsets:
            raise RecordOrderError("SeekIndex entries do not match the Scene records before it", offset)
        self.seek_index_offset = offset or 0

    def _end(self, r: EndRecord, offset: int | None) -> None:
        if not self.scene_has_keyframe:
            raise RecordOrderError("the stream ends without a complete scene", offset)
        expected = (self.frames_complete, self.scene_count, self.keyframe_count)
        if (r.frame_count, r.scene_count, r.keyframe_count) != expected:
            raise RecordOrderError(
                f"End totals (frames, scenes, keyframes) = "
                f"{(r.frame_count, r.scene_count, r.keyframe_count)} but the stream holds {expected}",
                offset,
            )
        if self.header.frame_count not in (0, r.frame_count):
            raise RecordOrderError(
                f"header frame_count {self.header.frame_count} != End frame_count {r.frame_count}", offset
            )
        if r.seek_index_offset != self.seek_index_offset:
            raise RecordOrderError(
                f"End seek_index_offset {r.seek_index_offset} does not point at the SeekIndex record "
                f"({self.seek_index_offset})",
                offset,
            )
        self.end = r
