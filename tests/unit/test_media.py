"""Audio decoding refuses absurd lengths and rates before decoding anything; decoding
errors are plain words."""

import io
import wave

import numpy as np
import pytest
import soundfile as sf

from app.ml.data.errors import DataValidationError, plain
from app.ml.data.media import (
    MAX_SOURCE_AUDIO_SAMPLES,
    NOT_AN_IMAGE,
    NOT_AUDIO,
    MediaError,
    decode_audio,
    decode_image,
)


def flac(samples: int, rate: int = 48_000, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((samples, channels), np.float32), rate, format="FLAC")
    return buffer.getvalue()


def wav(samples: int, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(samples, "<i2").tobytes())
    return buffer.getvalue()


def test_a_flac_of_silence_that_would_expand_past_the_limit_is_refused():
    data = flac(12 * 48_000 * 60)  # 12 minutes of silence: a few hundred KB of FLAC
    assert len(data) < 2_000_000 and MAX_SOURCE_AUDIO_SAMPLES < 12 * 48_000 * 60
    with pytest.raises(MediaError, match="over the limit of 32000000 samples"):
        decode_audio(data)


def test_channels_count_towards_the_limit():
    with pytest.raises(MediaError, match="2 channels"):
        decode_audio(flac(6_000, channels=2), max_samples=10_000)
    x, rate = decode_audio(flac(6_000, channels=2), max_samples=12_000)
    assert x.shape == (6_000,) and rate == 48_000


def test_wav_length_is_read_from_its_header():
    with pytest.raises(MediaError, match="over the limit"):
        decode_audio(wav(20_000), max_samples=10_000)
    x, rate = decode_audio(wav(8_000), max_samples=10_000)
    assert x.shape == (8_000,) and rate == 16_000


# ------------------------------------------------------------ what the errors say

def _png(size: int = 64) -> bytes:
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("data", "words"), [
    (b"not an image", NOT_AN_IMAGE),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, NOT_AN_IMAGE),
    (_png()[:2000], "damaged image data (image file is truncated"),
])
def test_image_errors_are_plain_words(data, words):
    """A reason a person can read: never Pillow's repr of the buffer
    ("cannot identify image file <_io.BytesIO object at 0x7f…>")."""
    with pytest.raises(MediaError) as info:
        decode_image(data, (8, 8), 3, 10_000)
    message = str(info.value)
    assert message.startswith(words), message
    assert "0x" not in message and "<" not in message and "Error" not in message


@pytest.mark.parametrize("data", [b"fLaC garbage", b"OggS garbage", b"RIFF\0\0\0\0WAVEjunk"])
def test_audio_errors_are_plain_words(data):
    with pytest.raises(MediaError) as info:
        decode_audio(data)
    message = str(info.value)
    assert message.startswith((NOT_AUDIO, "damaged")), message
    assert "0x" not in message and "<" not in message, message


def test_plain_drops_reprs_and_addresses_and_keeps_the_rest():
    assert plain("cannot identify image file <_io.BytesIO object at 0x7f3a1c2b9e50>") == (
        "cannot identify image file")
    assert plain("Error opening <_io.BytesIO object at 0x7f3a1c2b9e50>: Format not "
                 "recognised.") == "Error opening: Format not recognised."
    assert plain("not a .zip or .tar.gz archive") == "not a .zip or .tar.gz archive"
    assert DataValidationError("img", "bad <Foo object at 0xdeadbeef99>").reason == "bad"
