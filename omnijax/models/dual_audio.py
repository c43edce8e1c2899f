"""Ola's dual audio encoder: Whisper (speech) and BEATs (music) on the same window, concatenated on channels.

Ola's ``DualWrappedEncoder.forward`` (Ola-Omni/Ola ``ola/model/speech_encoder/speech_encoder.py``, lines 63-74)::

    speech = whisper(mel)                                  [n, Lw, Dw]   Lw = frames / 2 (1500 per 30 s)
    audio = beats.extract_features(waveform)               [n, Lb, Db]   Lb = fbank frames // 16 * 8 (1496)
    the shorter of the two right-padded with zero rows to the longer (F.pad, lines 68-71)
    cat((speech, audio), -1)                               [n, max(Lw, Lb), Dw + Db]   (1280 + 768 = 2048 at 7b)

BEATs' outputs are its patch sequence in time-major order (patch ``t * 8 + f``), taken row for row beside
Whisper's frames, as Ola takes them. Ola runs both encoders under ``torch.no_grad``; here whether each one trains
is a stage's choice (``c.trainable`` rules over ``audio/whisper/.*`` and ``audio/beats/.*``).

Param tree of the ``audio`` group: ``whisper/...`` (``omnijax.models.audio.WhisperEncoder``'s tree) and
``beats/...`` (``omnijax.models.beats.BEATsEncoder``'s tree).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from omnijax.media_tokens import beats_fbank_frames
from omnijax.models.audio import AudioConfig, WhisperEncoder
from omnijax.models.beats import MEL_BINS, BEATsConfig, BEATsEncoder


def aligned_length(whisper: AudioConfig, beats: BEATsConfig) -> int:
    """Rows per window out of the dual encoder: the longer of Whisper's outputs and BEATs' patches of the window."""
    return max(whisper.output_length, beats.num_patches(beats_fbank_frames(whisper.frames)))


def align_frames(speech, audio):
    """Ola's alignment: ``speech [n, Lw, Dw]``, ``audio [n, Lb, Db]`` -> ``[n, max(Lw, Lb), Dw + Db]``, the
    shorter sequence right-padded with zero rows, then concatenated on channels (speech first)."""
    length = max(speech.shape[1], audio.shape[1])

    def pad(x):
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))

    return jnp.concatenate([pad(speech), pad(audio).astype(speech.dtype)], axis=-1)


class DualAudioEncoder(nn.Module):
    """The ``audio`` parameter group of a Whisper + BEATs model (module docstring).

    ``encode_chunks(mel [b, c, n_mels, frames], fbank [b, c, fbank_frames, 128]) -> [b, c, L, Dw + Db]`` with
    ``L = aligned_length(cfg, beats_cfg)``; the chunks fold into the batch (each window encoded on its own)."""

    cfg: AudioConfig
    beats_cfg: BEATsConfig

    def setup(self):
        if self.cfg.variant != "whisper":
            raise ValueError(f"the dual audio encoder pairs BEATs with Whisper (variant 'whisper'), got variant "
                             f"{self.cfg.variant!r}")
        self.whisper = WhisperEncoder(self.cfg, name="whisper")
        self.beats = BEATsEncoder(self.beats_cfg, name="beats")

    def encode_chunks(self, mel, fbank):
        want = (*mel.shape[:2], beats_fbank_frames(self.cfg.frames), MEL_BINS)
        if fbank is None or tuple(fbank.shape) != want:
            got = None if fbank is None else tuple(fbank.shape)
            raise ValueError(f"the dual audio encoder's BEATs needs fbank features [batch, windows, fbank_frames, "
                             f"{MEL_BINS}] = {list(want)} (batch field 'audio_fbank', data_pipelines.audio.beats_fbank "
                             f"of each window), got {got}")
        b, c = mel.shape[:2]
        speech = self.whisper.encode_chunks(mel)  # [b, c, Lw, Dw]
        audio = self.beats(fbank.reshape(b * c, *fbank.shape[2:]))  # [b * c, Lb, Db]
        out = align_frames(speech.reshape(b * c, *speech.shape[2:]), audio)
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))
        return out.reshape(b, c, *out.shape[1:])
