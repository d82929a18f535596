"""One exception tree for the whole codec.

Every error the codec raises on purpose derives from :class:`PrxError`, so a caller
can catch one class. Errors about bad bytes also derive from :class:`ValueError`,
which is what callers of a parser expect.

    PrxError
    ├── FormatError (ValueError)        the bytes break format_spec.md
    │   ├── BadMagicError               §3.1  not a .prx file
    │   ├── UnsupportedVersionError     §3.1  major version this reader does not know
    │   ├── CrcMismatchError            §4    stored CRC-32 differs from the computed one
    │   ├── TruncatedError              §4    the file ends inside a structure
    │   ├── LengthError                 §4/§8 a length or count is impossible or too large
    │   ├── UnknownCriticalRecordError  §4.2  a critical record type this reader does not know
    │   ├── ForbiddenValueError         §7    a field holds a value the spec forbids
    │   ├── RecordOrderError            §5    records out of decode order
    │   └── TrailingDataError           §5    bytes after the End record
    ├── ModelError                      the model cannot be used for this stream
    │   ├── WeightsNotFoundError        weights are not on this machine
    │   └── ModelMismatchError          stream made for another model
    ├── MissingDependencyError (ImportError)  an optional extra is not installed
    ├── MediaError                      input video or output path problem
    └── RateControlError (ValueError)   the requested bitrate cannot be reached
"""

from __future__ import annotations


class PrxError(Exception):
    """Root of every error promptus-codec raises on purpose."""


class FormatError(PrxError, ValueError):
    """The bytes do not follow format_spec.md.

    ``offset`` is the byte offset in the file where the problem was found, when known.
    """

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.offset = offset


class BadMagicError(FormatError):
    """The file does not start with the .prx signature."""


class UnsupportedVersionError(FormatError):
    """The file's major version is not one this reader implements."""


class CrcMismatchError(FormatError):
    """A header or record CRC-32 does not match its bytes."""


class TruncatedError(FormatError):
    """The file ends in the middle of a structure, or before its End record."""


class LengthError(FormatError):
    """A length or count field is inconsistent or exceeds the spec's limits."""


class UnknownCriticalRecordError(FormatError):
    """A record type with the critical bit that this reader does not implement."""


class ForbiddenValueError(FormatError):
    """A field holds a value that format_spec.md forbids (rank 0, zero size, NaN...)."""


class RecordOrderError(FormatError):
    """Records are not in the decode order format_spec.md requires."""


class TrailingDataError(FormatError):
    """Bytes follow the End record."""


class ModelError(PrxError):
    """The model cannot be used (missing, or not the one the stream was made for)."""


class WeightsNotFoundError(ModelError):
    """Model weights are not on this machine; the message says where to put them."""


class ModelMismatchError(ModelError):
    """The stream's model fingerprint differs from the loaded model's."""


class MissingDependencyError(PrxError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class MediaError(PrxError):
    """A video could not be read or written."""


class RateControlError(PrxError, ValueError):
    """The target bitrate cannot be met; the message gives the reachable range."""


class UsageError(PrxError, ValueError):
    """A request the codec cannot carry out as asked: an unknown preset, start, loss or baseline,
    an output it cannot write, a resume that does not match what was started."""


def require(module: str, extra: str):
    """Import an optional dependency or raise MissingDependencyError naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"{module} is not installed: run  pip install 'promptus-codec[{extra}]'") from exc
