"""What a safetensors blob or file holds, read from its header alone: the string
metadata, and each tensor's dtype and shape (so a weights file can be checked
against a model before a byte of its tensors is read)."""

import json
import os
from typing import Any, BinaryIO

# the format's own limit on the JSON header
MAX_HEADER_BYTES = 100_000_000


def header_metadata(blob: bytes) -> dict[str, str]:
    """``__metadata__`` of a safetensors blob: an 8-byte little-endian header
    length, then the JSON header (no tensor is read)."""
    header_len = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8:8 + header_len]).get("__metadata__") or {})


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of safetensors file ``path`` ({name: {dtype, shape,
    data_offsets}}, plus ``__metadata__``), reading only its first bytes."""
    with open(path, "rb") as f:
        return read_header_from(f, repr(os.fspath(path)))


def read_header_from(f: BinaryIO, label: str) -> dict[str, Any]:
    """``read_header`` of an open binary file (a local, fsspec or in-memory one),
    read from its start; ``label`` names it in errors."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ValueError(f"{label} is not a safetensors file (too short)")
    size = int.from_bytes(prefix, "little")
    if size > MAX_HEADER_BYTES:
        raise ValueError(f"{label}: safetensors header of {size} bytes "
                         f"passes the format's limit of {MAX_HEADER_BYTES}")
    raw = f.read(size)
    if len(raw) < size:
        raise ValueError(f"{label} is truncated inside its safetensors header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{label} has no valid safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{label}: safetensors header is not a JSON object")
    return header


def tensor_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of safetensors file ``path``, from its header alone."""
    return header_shapes(read_header(path), repr(os.fspath(path)))


def header_shapes(header: dict[str, Any], label: str) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a header from ``read_header``/``read_header_from``."""
    shapes = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise ValueError(f"{label}: tensor {name!r} has no shape in the header")
        shapes[name] = tuple(int(d) for d in info["shape"])
    return shapes
