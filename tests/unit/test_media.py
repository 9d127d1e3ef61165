"""Audio decoding refuses absurd lengths and rates before decoding anything."""

import io
import wave

import numpy as np
import pytest
import soundfile as sf

from app.ml.data.media import MAX_SOURCE_AUDIO_SAMPLES, MediaError, decode_audio


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
