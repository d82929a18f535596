"""promptus-codec: a video codec that streams prompts instead of pixels."""

__version__ = "0.2.0"  # written into every stream's encoder settings: a resume refuses another
