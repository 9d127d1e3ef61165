"""The data error type, and ``plain``: error text fit to show a person."""

import re

# "<_io.BytesIO object at 0x7f3a…>", "<function f at 0x…>", and bare addresses
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\s*\b0x[0-9a-fA-F]{8,}\b")


def plain(text: object) -> str:
    """``text`` without Python object reprs and memory addresses, which mean
    nothing to the person reading an error (``cannot identify image file
    <_io.BytesIO object at 0x7f…>`` → ``cannot identify image file``)."""
    return _ADDRESS.sub("", _OBJECT_REPR.sub("", str(text))).strip()


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, for a person: its message made ``plain``, or its type's
    name when it has no message (a bare ``KeyError``)."""
    return plain(exc) or type(exc).__name__


class DataValidationError(ValueError):
    """User data that cannot be prepared; ``field`` names what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        reason = plain(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
