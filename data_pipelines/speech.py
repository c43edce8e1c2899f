"""Text-to-speech with eSpeak NG (the `espeakng-loader` wheel ships the library and its data), via ctypes.

`synthesize(text, voice, rate, pitch)` returns a float32 waveform at 22050 Hz; `synthesize_16k` the
same resampled to 16 kHz for the audio towers. `VoiceParams.sample(rng)` draws a voice (an English
accent plus a speaker variant), a rate and a pitch, so a corpus is not one speaker at one speed.

Why a helper process: libespeak-ng keeps state across utterances that no API call resets (the pitch
flutter index, the gain control, the noise generator of breathy voices), so the same text
synthesised twice in one process gives different samples. The helper initialises the library once
and forks a child for every utterance; each child starts from the same freshly initialised state
and fixes the noise seed (which `espeak_Initialize` takes from the clock), which makes `synthesize`
a pure function of its arguments: the same bytes in any order, in any process, in any data worker.
The helper is this file run as a script (standard library, ctypes and numpy); a fork costs about a
millisecond. One helper per client process (spawned or forked data workers start their own), and a
lock makes the client thread-safe.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np

SAMPLE_RATE = 22_050  # what espeak_Initialize returns for the bundled data

# English accents in espeak-ng data (lang/gmw/en*) and speaker variants (voices/!v/): the default
# male, m1-m4 and f1-f4. Odd variants (whisper, croak, robots) are left out on purpose.
ENGLISH_VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
VARIANTS = ("", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4")
RATE_RANGE = (130, 220)  # words per minute; espeak's default is 175
PITCH_RANGE = (30, 70)  # 0-100; espeak's default is 50

# espeak_PARAMETER values from speak_lib.h
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_NOISE_SEED = 0  # breath noise of the f2/f3 variants; espeak_Initialize seeds it with time()
_HEADER = struct.Struct("<ii")  # (status, payload bytes); status 0 = int16 samples, else a UTF-8 error


@dataclasses.dataclass(frozen=True)
class VoiceParams:
    """One speaker setting: espeak voice name (`accent` or `accent+variant`), rate (wpm), pitch (0-100)."""

    voice: str = "en"
    rate: int = 175
    pitch: int = 50

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "VoiceParams":
        """Draw an English accent, a speaker variant, a rate in RATE_RANGE and a pitch in PITCH_RANGE."""
        accent = ENGLISH_VOICES[rng.integers(len(ENGLISH_VOICES))]
        variant = VARIANTS[rng.integers(len(VARIANTS))]
        return cls(
            voice=f"{accent}+{variant}" if variant else accent,
            rate=int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
            pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
        )


class SpeechSynthesisError(RuntimeError):
    """eSpeak NG could not be loaded or could not speak the request."""


def _espeak_paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as err:
        raise SpeechSynthesisError(
            "eSpeak NG is not available: the Python package 'espeakng-loader' (which ships libespeak-ng "
            "and its data) is not installed; install it with `pip install espeakng-loader`"
        ) from err
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _read_exact(stream, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError(f"eSpeak NG helper closed its output after {0 if data is None else len(data)} of {size} bytes")
    return data


class _Client:
    """Talks to one helper process (this module run with `--serve`); one request at a time."""

    def __init__(self) -> None:
        library, data = _espeak_paths()
        self._process = subprocess.Popen(
            # -P: keep this folder off the helper's sys.path (its modules must not shadow the stdlib's)
            [sys.executable, "-P", os.path.abspath(__file__), "--serve", library, data],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # stderr is inherited: the helper's own errors show up in ours
        )
        self.sample_rate = int(self._response("start-up"))
        atexit.register(self.close)

    def _response(self, what: str) -> bytes:
        try:
            status, size = _HEADER.unpack(_read_exact(self._process.stdout, _HEADER.size))
            payload = _read_exact(self._process.stdout, size)
        except (EOFError, OSError) as err:
            self._process.kill()
            raise SpeechSynthesisError(f"eSpeak NG helper died during {what}: {err} (its stderr is above)") from err
        if status != 0:
            raise SpeechSynthesisError(payload.decode("utf-8", errors="replace"))
        return payload

    def speak(self, params: VoiceParams, text: str) -> bytes:
        request = json.dumps({"text": text, "voice": params.voice, "rate": params.rate, "pitch": params.pitch})
        try:
            self._process.stdin.write(request.encode() + b"\n")
            self._process.stdin.flush()
        except OSError as err:
            raise SpeechSynthesisError(f"eSpeak NG helper is gone (exit code {self._process.poll()}): {err}") from err
        return self._response(f"synthesis of {text!r} with {params}")

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait()


_lock = threading.Lock()
_client: _Client | None = None


def _forget_parent_helper() -> None:
    """In a forked child: start a helper of its own, and drop a lock another parent thread may hold."""
    global _lock, _client
    _lock, _client = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_parent_helper)


def _get_client() -> _Client:
    """The helper of this process, started on first use."""
    global _client
    if _client is None:
        _client = _Client()
    return _client


def synthesize(text: str, voice: str = "en", rate: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Speak `text` with eSpeak NG -> (float32 waveform `[samples]` in [-1, 1], 22050).

    `voice` is an espeak voice name (`en`, `en-us`, `en-gb-x-rp+f2`, ... see ENGLISH_VOICES and
    VARIANTS), `rate` in words per minute (80-450), `pitch` 0-100. Deterministic: the same arguments
    give the same samples. Thread-safe.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if not 80 <= rate <= 450:
        raise ValueError(f"rate must be 80-450 words per minute (espeak's range), got {rate!r}")
    if not 0 <= pitch <= 100:
        raise ValueError(f"pitch must be 0-100, got {pitch!r}")
    params = VoiceParams(voice, int(rate), int(pitch))
    with _lock:
        client = _get_client()
        pcm = client.speak(params, text)
        sample_rate = client.sample_rate
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if samples.size == 0:
        raise SpeechSynthesisError(f"eSpeak NG produced no audio for {text!r} with {params}")
    return samples, sample_rate


def synthesize_16k(text: str, voice: str = "en", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """`synthesize` resampled to 16 kHz (soxr, as `audio.resample_to_16k`) -> float32 `[samples]`."""
    from data_pipelines.audio import resample_to_16k

    samples, sample_rate = synthesize(text, voice, rate, pitch)
    return resample_to_16k(samples, sample_rate)


def _speak_in_child(lib: ctypes.CDLL, chunks: list[bytes], request: dict) -> tuple[int, bytes]:
    """One utterance in a freshly forked child of the helper -> (status, int16 PCM bytes or error)."""
    if lib.espeak_SetVoiceByName(request["voice"].encode()) != 0:
        return 1, (
            f"eSpeak NG has no voice {request['voice']!r}; use one of {ENGLISH_VOICES}, "
            f"optionally with '+variant' from {VARIANTS[1:]}"
        ).encode()
    lib.espeak_SetParameter(_ESPEAK_RATE, request["rate"], 0)
    lib.espeak_SetParameter(_ESPEAK_PITCH, request["pitch"], 0)
    lib.espeak_ng_SetRandSeed(_NOISE_SEED)
    text = request["text"].encode()
    error = lib.espeak_Synth(text, len(text) + 1, 0, 1, 0, _ESPEAK_CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    if error != 0:
        return 1, f"espeak_Synth failed with error {error} for {request['text']!r}".encode()
    return 0, b"".join(chunks)


def _serve(library_path: str, data_path: str) -> None:
    """Helper process: initialise eSpeak NG once, then fork one child per request line on stdin."""
    out = sys.stdout.buffer

    def reply(status: int, payload: bytes) -> None:
        out.write(_HEADER.pack(status, len(payload)) + payload)
        out.flush()

    try:
        lib = ctypes.CDLL(library_path)
    except OSError as err:
        reply(1, f"cannot load libespeak-ng from {library_path}: {err}; reinstall espeakng-loader".encode())
        return
    if not hasattr(lib, "espeak_ng_SetRandSeed"):
        reply(1, f"{library_path} has no espeak_ng_SetRandSeed (eSpeak NG 1.52+); without it breathy voices "
                 "are not reproducible: upgrade espeakng-loader".encode())
        return
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_void_p, ctypes.c_void_p,
    ]
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if sample_rate <= 0:
        reply(1, f"espeak_Initialize failed (returned {sample_rate}) with data at {data_path}".encode())
        return
    chunks: list[bytes] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def on_audio(wav, num_samples, events):
        if wav and num_samples > 0:
            chunks.append(ctypes.string_at(wav, 2 * num_samples))
        return 0

    lib.espeak_SetSynthCallback(on_audio)
    reply(0, str(sample_rate).encode())

    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                status, payload = _speak_in_child(lib, chunks, request)
                reply(status, payload)
            except BaseException as err:  # the parent waits for a reply: always send one
                reply(1, f"eSpeak NG helper failed on {request!r}: {err!r}".encode())
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            reply(1, f"eSpeak NG crashed (wait status {status}) on {request['text']!r}".encode())


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--serve":
    _serve(sys.argv[2], sys.argv[3])
