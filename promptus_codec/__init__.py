"""promptus-codec: a video codec that streams prompts instead of pixels."""

__version__ = "0.1.0"
