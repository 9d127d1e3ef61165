#!/usr/bin/env python3
"""Make ``app/ml/data/assets/spoken_digits.npz``: log-mel features of spoken digits.

The audio half of the ``avmnist`` built-in (scikit-learn's digit images paired
with spoken digits, in the shape of AV-MNIST from MultiBench). Run once by a
maintainer; the service only reads the shipped file and never synthesises or
downloads anything.

Every digit word ("zero" .. "nine") is synthesised with Debian's ``espeak-ng``
for every (accent, voice variant) pair below, each at its own seeded pitch and
speed, trimmed of silence, resampled to 16 kHz, placed in a 640 ms clip with a
small seeded time shift, mixed with white noise at a seeded SNR, and turned
into a 40-bin log-mel spectrogram of 32 frames (25 ms windows, 20 ms hop).
The features are standardised over the whole file (mean 0, std 1) and stored
as float16, with each utterance's label and generation parameters.

    apt-get install espeak-ng
    .venv/bin/python scripts/make_spoken_digits.py            # writes the asset
    .venv/bin/python scripts/make_spoken_digits.py --out x.npz

Same espeak-ng and seed, same file (up to espeak-ng's own determinism).
"""

import argparse
import io
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's English accents (``espeak-ng --voices=en``, the non-mbrola ones) ...
ACCENTS = ("en-gb", "en-us", "en-029", "en-us-nyc", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-gb-scotland")
# ... times its voice variants (``espeak-ng --voices=variant``); "" = the accent's own voice
VARIANTS = ("", "m1", "m3", "m7", "f2", "f3", "f4", "klatt", "croak", "whisper")
PITCH = (25, 76)      # espeak-ng -p, 0..99 (default 50), drawn uniformly per utterance
SPEED = (120, 221)    # espeak-ng -s, words per minute (default 175)
SNR_DB = (10.0, 30.0)  # white noise added to the waveform

SAMPLE_RATE = 16_000
N_FFT = 512
WIN = 400             # 25 ms
HOP = 320             # 20 ms
N_MELS = 40
N_FRAMES = 32         # 32 frames of 20 ms: a 640 ms clip
TOP_DB = 80.0
CLIP = HOP * (N_FRAMES - 1) + WIN

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "app/ml/data/assets/spoken_digits.npz"


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split("Data at")[0].strip()


def synthesise(voice: str, pitch: int, speed: int, word: str) -> tuple[np.ndarray, int]:
    """espeak-ng's WAV of ``word``, as float samples in [-1, 1] and its rate."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed),
                          "--stdout", word], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        # espeak-ng streams with an unknown length: read whatever follows the header
        frames = w.readframes(2**31 - 1)
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0, rate


def trim(x: np.ndarray, threshold_db: float = -35.0) -> np.ndarray:
    """Drop leading and trailing silence (10 ms frames under ``threshold_db`` of the peak)."""
    frame = SAMPLE_RATE // 100
    n = len(x) // frame
    energy = (x[:n * frame].reshape(n, frame) ** 2).mean(axis=1) + 1e-12
    loud = np.flatnonzero(10 * np.log10(energy / energy.max()) > threshold_db)
    if len(loud) == 0:
        return x
    return x[loud[0] * frame:(loud[-1] + 1) * frame]


def mel_filterbank() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular HTK-mel filters from 20 Hz to Nyquist."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(20.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)),
                                  N_MELS + 2))
    freqs = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(clip: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(N_MELS, N_FRAMES) log-mel power in dB, floored TOP_DB under its peak."""
    idx = np.arange(WIN)[None] + HOP * np.arange(N_FRAMES)[:, None]
    frames = clip[idx] * np.hanning(WIN)[None]
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2  # (T, F)
    mel = 10.0 * np.log10(np.maximum(power @ bank.T, 1e-10)).T
    return np.maximum(mel, mel.max() - TOP_DB)


def place(speech: np.ndarray, shift: int, snr_db: float,
          rng: np.random.Generator) -> np.ndarray:
    """The speech centred (plus ``shift`` samples) in a CLIP-long clip, cropped
    to its centre if longer, with white noise at ``snr_db``."""
    if len(speech) > CLIP:
        start = (len(speech) - CLIP) // 2
        speech = speech[start:start + CLIP]
    clip = np.zeros(CLIP, dtype=np.float64)
    start = int(np.clip((CLIP - len(speech)) // 2 + shift, 0, CLIP - len(speech)))
    clip[start:start + len(speech)] = speech
    rms = np.sqrt(np.mean(speech.astype(np.float64) ** 2)) + 1e-9
    return clip + rng.normal(0.0, rms / 10 ** (snr_db / 20), CLIP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    version = espeak_version()
    rng = np.random.default_rng(args.seed)
    plan = [(digit, accent + (f"+{variant}" if variant else ""),
             int(rng.integers(*PITCH)), int(rng.integers(*SPEED)),
             float(rng.uniform(*SNR_DB)), int(rng.integers(-3 * HOP, 3 * HOP + 1)))
            for digit in range(10) for accent in ACCENTS for variant in VARIANTS]

    def make(job: tuple[int, str, int, int, float, int]) -> np.ndarray:
        digit, voice, pitch, speed, _, _ = job
        audio, rate = synthesise(voice, pitch, speed, WORDS[digit])
        if rate != SAMPLE_RATE:
            g = np.gcd(rate, SAMPLE_RATE)
            audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
        return trim(audio)

    with ThreadPoolExecutor(max_workers=2) as pool:
        speech = list(pool.map(make, plan))

    bank = mel_filterbank()
    noise_rng = np.random.default_rng([args.seed, 1])
    durations = np.array([len(s) / SAMPLE_RATE for s in speech], dtype=np.float32)
    feats = np.stack([log_mel(place(s, job[5], job[4], noise_rng), bank)
                      for s, job in zip(speech, plan, strict=True)])
    mean, std = float(feats.mean()), float(feats.std())
    feats = ((feats - mean) / std).astype(np.float16)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        features=feats,
        labels=np.array([j[0] for j in plan], dtype=np.uint8),
        voice=np.array([j[1] for j in plan]),
        pitch=np.array([j[2] for j in plan], dtype=np.int16),
        speed=np.array([j[3] for j in plan], dtype=np.int16),
        snr_db=np.array([j[4] for j in plan], dtype=np.float32),
        shift_ms=np.array([j[5] * 1000 // SAMPLE_RATE for j in plan], dtype=np.int16),
        duration_s=durations,
        words=np.array(WORDS),
        espeak_version=np.array(version),
        params=np.array(f"sample_rate={SAMPLE_RATE} n_fft={N_FFT} win={WIN} hop={HOP} "
                        f"n_mels={N_MELS} frames={N_FRAMES} top_db={TOP_DB} "
                        f"fmin=20 fmax={SAMPLE_RATE // 2} seed={args.seed}"),
        feature_mean_db=np.array(mean, dtype=np.float32),
        feature_std_db=np.array(std, dtype=np.float32),
    )
    cropped = int((durations > CLIP / SAMPLE_RATE).sum())
    print(f"{args.out}: {len(plan)} utterances ({len(plan) // 10} per digit), "
          f"{args.out.stat().st_size / 1e6:.2f} MB, {version}; speech "
          f"{durations.min():.2f}-{durations.max():.2f} s, {cropped} cropped to "
          f"{CLIP / SAMPLE_RATE:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
