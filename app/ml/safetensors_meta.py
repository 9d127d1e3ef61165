"""The string metadata of a safetensors blob, read from its header alone."""

import json


def header_metadata(blob: bytes) -> dict[str, str]:
    """``__metadata__`` of a safetensors blob: an 8-byte little-endian header
    length, then the JSON header (no tensor is read)."""
    header_len = int.from_bytes(blob[:8], "little")
    return dict(json.loads(blob[8:8 + header_len]).get("__metadata__") or {})
