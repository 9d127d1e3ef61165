"""Decode encoded images (Pillow) and audio (WAV via ``wave``, FLAC/OGG via soundfile).

Each decoder raises ``MediaError`` with a short reason a person can read (never a
Python repr); the caller adds the row.
"""

import io
import warnings
import wave

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.ml.data.errors import plain

try:  # soundfile's wheels carry libsndfile; without it only WAV is read
    import soundfile as _soundfile
except (ImportError, OSError):  # pragma: no cover - depends on the platform
    _soundfile = None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class MediaError(ValueError):
    pass


NOT_AN_IMAGE = "not an image PIL can read (PNG, JPEG, GIF, BMP, TIFF, WebP, …)"
NOT_AUDIO = "not audio soundfile can read (WAV, FLAC, OGG)"


def _reason(exc: Exception, what: str, unknown_format: str) -> str:
    """Why a decoder failed, in words: the format is not one it reads, or the data is
    damaged (the library's message, without reprs)."""
    if isinstance(exc, UnidentifiedImageError) or "Format not recognised" in str(exc):
        return unknown_format
    detail = plain(exc)
    return f"damaged {what} ({detail})" if detail else f"damaged {what}"


def looks_like_audio(data: bytes) -> bool:
    return data[:4] in (b"RIFF", b"fLaC", b"OggS") and (data[:4] != b"RIFF"
                                                         or data[8:12] == b"WAVE")


def _open_image(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise MediaError(f"{w}x{h} pixels is over the limit of {max_pixels} "
                                 "(decompression bomb?)")
            img.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"decompression bomb: {plain(exc)}") from exc
    except Exception as exc:  # Pillow raises many types on bad data
        raise MediaError(_reason(exc, "image data", NOT_AN_IMAGE)) from exc
    return img


def image_channels(data: bytes, max_pixels: int) -> int:
    """1 for grayscale sources, else 3."""
    return _channels(_open_image(data, max_pixels))


def _channels(img: Image.Image) -> int:
    return 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3


def decode_image(data: bytes, size: tuple[int, int], channels: int,
                 max_pixels: int) -> np.ndarray:
    """(C, H, W) uint8, resized bilinearly to ``size`` = (H, W)."""
    img = _open_image(data, max_pixels)
    try:
        img = img.convert("L" if channels == 1 else "RGB")
        h, w = size
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise MediaError(_reason(exc, "image data", NOT_AN_IMAGE)) from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_frame(data: bytes, channels: int | None, max_pixels: int) -> np.ndarray:
    """(C, H, W) uint8 at the image's own size (a video frame is never resized:
    its clip's frames must agree); ``channels`` None: 1 for grey sources, else 3."""
    img = _open_image(data, max_pixels)
    channels = channels or _channels(img)
    try:
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except Exception as exc:
        raise MediaError(_reason(exc, "image data", NOT_AN_IMAGE)) from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        rate, width, chans = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        ints = (raw[:, 0].astype(np.int32) | (raw[:, 1].astype(np.int32) << 8)
                | (raw[:, 2].astype(np.int32) << 16))
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        x = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(frames, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise MediaError(f"unsupported WAV sample width {width}")
    if chans > 1:
        x = x[: len(x) // chans * chans].reshape(-1, chans).mean(axis=1)
    return x.astype(np.float32), rate


# samples (all channels) one source clip may decode to: ~5.5 minutes of 48 kHz
# stereo; a few KB of FLAC silence could otherwise expand to gigabytes
MAX_SOURCE_AUDIO_SAMPLES = 32_000_000
_MAX_RATE = 768_000


def _check_size(frames: int, channels: int, rate: int, max_samples: int) -> None:
    if not 0 < rate <= _MAX_RATE:
        raise MediaError(f"sample rate {rate} Hz is not between 1 and {_MAX_RATE}")
    if frames * channels > max_samples:
        raise MediaError(f"{frames} frames × {channels} channels is over the limit of "
                         f"{max_samples} samples per clip (an audio decompression bomb?)")


def decode_audio(data: bytes,
                 max_samples: int = MAX_SOURCE_AUDIO_SAMPLES) -> tuple[np.ndarray, int]:
    """Mono float32 waveform in [-1, 1] and its sample rate; the header's length is
    checked against ``max_samples`` before anything is decoded."""
    if not data:
        raise MediaError("empty audio")
    if data[:4] == b"RIFF":
        try:
            with wave.open(io.BytesIO(data)) as w:
                _check_size(w.getnframes(), w.getnchannels(), w.getframerate(), max_samples)
            return _decode_wav(data)
        except MediaError:
            raise
        except (wave.Error, EOFError, ValueError) as exc:
            if _soundfile is None:
                raise MediaError(f"damaged WAV data ({plain(exc)})") from exc
    if _soundfile is None:
        raise MediaError("only WAV audio can be read here (soundfile is not installed)")
    try:
        info = _soundfile.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile reads the header: an unknown format fails here
        raise MediaError(NOT_AUDIO) from exc
    _check_size(int(info.frames), int(info.channels), int(info.samplerate), max_samples)
    try:
        x, rate = _soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError(_reason(exc, "audio data", NOT_AUDIO)) from exc
    return x.mean(axis=1).astype(np.float32), int(rate)


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Linear-interpolation resample (no anti-aliasing filter)."""
    if src == dst or len(x) == 0:
        return x
    n = max(1, round(len(x) * dst / src))
    return np.interp(np.arange(n) * (src / dst), np.arange(len(x)), x).astype(np.float32)


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Crop or zero-pad at the end to ``length`` samples."""
    if len(x) >= length:
        return x[:length]
    return np.pad(x, (0, length - len(x)))
