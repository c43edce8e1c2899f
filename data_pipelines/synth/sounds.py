"""omni-synth's sounds: short non-speech clips -- one note, a chord, a melody rising or falling, a rhythm of evenly
spaced beats -- played by a few synthetic instruments of distinct timbre, sampled from a random stream.

    flute    sine tones (the fundamental alone)
    organ    square waves (odd harmonics at 1/k), band-limited
    violin   sawtooth waves (every harmonic at 1/k), band-limited
    guitar   Karplus-Strong plucked strings (a string's plucked shape in a damped delay line: bright, decaying)
    drum     noise bursts over a low thump (no pitch; rhythms only)

    sample_clip(rng, kind) -> {"kind", "instrument", "notes": [{"start": s, "seconds": s, "pitches": [midi, ...]}],
                               "seconds", "gain", ...}; a melody adds its "direction", a note its "register"
    render_clip(clip)      -> waveform [samples] float32 at 16 kHz, 1-4 s
"""

from __future__ import annotations

import numpy as np

from data_pipelines.synth.scenes import pick

RATE = 16_000
INSTRUMENTS = ("flute", "organ", "violin", "guitar", "drum")
PITCHED = INSTRUMENTS[:4]
CLIP_KINDS = ("note", "chord", "melody", "rhythm")
# MIDI pitches of a note said to be low (110-220 Hz) or high (523-1047 Hz): an octave and more apart.
REGISTERS = {"low": (45, 57), "high": (72, 84)}
MIN_SECONDS, MAX_SECONDS = 1.0, 4.0
_ATTACK, _RELEASE = 0.01, 0.03  # seconds of the pitched instruments' linear fade in and out


def hertz(midi: float) -> float:
    """The frequency of a MIDI pitch (69 = A4 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _additive(freq: float, t: np.ndarray, step: int) -> np.ndarray:
    """Harmonics 1, 1 + step, 1 + 2 step, ... below 7.5 kHz at amplitude 1/k (step 2: square, 1: sawtooth)."""
    ks = np.arange(1, int(7500 // freq) + 1, step)
    return (np.sin(2 * np.pi * freq * ks[:, None] * t[None, :]) / ks[:, None]).sum(0)


def _pluck(freq: float, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong: a string's shape plucked at a point (a triangle, with a little noise) one period long,
    fed back through an averaging, damped delay line; computed a period at a time (each sample reads two of
    the period before)."""
    period = max(2, round(RATE / freq))
    out = np.zeros(samples + period + 1)
    x = np.linspace(0, 1, period + 1)
    at = rng.uniform(0.15, 0.35)
    shape = np.minimum(x / at, (1 - x) / (1 - at)) + 0.2 * rng.uniform(-1, 1, period + 1)
    out[: period + 1] = shape - shape.mean()
    for start in range(period + 1, out.size, period):
        stop = min(start + period, out.size)
        before = out[start - period - 1 : stop - period]
        out[start:stop] = 0.99 * 0.5 * (before[1:] + before[:-1])
    return out[period + 1 :]


def _drum(samples: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(samples) / RATE
    return (0.6 * rng.uniform(-1, 1, samples) + np.sin(2 * np.pi * 70 * t)) * np.exp(-t / 0.04)


def _tone(instrument: str, pitches: list[int], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One note or chord of `instrument`, `seconds` long."""
    samples = int(round(seconds * RATE))
    if instrument == "drum":
        return _drum(samples, rng)
    t = np.arange(samples) / RATE
    if instrument == "guitar":
        wave = sum(_pluck(hertz(p), samples, rng) for p in pitches)
    else:
        wave = sum(np.sin(2 * np.pi * hertz(p) * t) if instrument == "flute"
                   else _additive(hertz(p), t, 2 if instrument == "organ" else 1) for p in pitches)
    fade = np.minimum(1.0, np.minimum(t / _ATTACK, (seconds - t) / _RELEASE))
    return wave * np.clip(fade, 0.0, 1.0)


def _melody(rng: np.random.Generator) -> dict:
    count = int(rng.integers(3, 6))
    direction = pick(rng, ("rising", "falling"))
    steps = rng.integers(2, 5, size=count - 1)  # 2-4 semitones a step
    start = int(rng.integers(50, 62) if direction == "rising" else rng.integers(66, 78))  # stays in 50-78
    pitches = np.concatenate([[0], np.cumsum(steps)]) * (1 if direction == "rising" else -1) + start
    length = float(rng.uniform(0.25, 0.5))
    notes = [{"start": i * length, "seconds": length, "pitches": [int(p)]} for i, p in enumerate(pitches)]
    return {"notes": notes, "direction": direction}


def _rhythm(rng: np.random.Generator) -> dict:
    beats = int(rng.integers(2, 7))
    gap, lead, pitch = float(rng.uniform(0.3, 0.5)), float(rng.uniform(0.1, 0.3)), int(rng.integers(55, 72))
    notes = [{"start": lead + i * gap, "seconds": 0.12, "pitches": [pitch]} for i in range(beats)]
    return {"notes": notes, "beats": beats}


def sample_clip(rng: np.random.Generator, kind: str, instrument: str | None = None) -> dict:
    """A clip of `kind` (CLIP_KINDS) played by `instrument` (default: drawn; the drum plays rhythms only)."""
    if kind not in CLIP_KINDS:
        raise ValueError(f"unknown clip kind {kind!r}; kinds are: {', '.join(CLIP_KINDS)}")
    instrument = instrument or pick(rng, INSTRUMENTS if kind == "rhythm" else PITCHED)
    if instrument == "drum" and kind != "rhythm":
        raise ValueError(f"the drum has no pitch and plays rhythms only, not a {kind}")
    clip = {"kind": kind, "instrument": instrument}
    if kind == "note":
        register = pick(rng, list(REGISTERS))
        low, high = REGISTERS[register]
        seconds = float(rng.uniform(1.0, 2.5))
        clip |= {"register": register, "notes": [{"start": 0.0, "seconds": seconds,
                                                  "pitches": [int(rng.integers(low, high + 1))]}]}
    elif kind == "chord":
        root = int(rng.integers(50, 70))
        third = pick(rng, (3, 4))  # minor or major triad
        clip |= {"notes": [{"start": 0.0, "seconds": float(rng.uniform(1.0, 2.5)),
                            "pitches": [root, root + third, root + 7]}]}
    else:
        clip |= _melody(rng) if kind == "melody" else _rhythm(rng)
    end = max(n["start"] + n["seconds"] for n in clip["notes"])
    clip["seconds"] = round(min(MAX_SECONDS, max(MIN_SECONDS, end + 0.2)), 3)
    clip["gain"] = round(float(rng.uniform(0.3, 0.6)), 3)
    clip["noise_seed"] = int(rng.integers(2**31))
    return clip


def render_clip(clip: dict) -> np.ndarray:
    """The waveform of a `sample_clip` clip: float32 at 16 kHz, peak `gain`."""
    rng = np.random.default_rng(clip["noise_seed"])  # the plucks' and drums' noise
    out = np.zeros(int(round(clip["seconds"] * RATE)))
    for note in clip["notes"]:
        wave = _tone(clip["instrument"], note["pitches"], note["seconds"], rng)
        begin = int(round(note["start"] * RATE))
        out[begin : begin + wave.size] += wave[: out.size - begin]
    return (clip["gain"] * out / np.abs(out).max()).astype(np.float32)
