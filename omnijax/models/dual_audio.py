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

BEATs alone (``speech=False``, ``OmniConfig.speech_encoder=False``): the same module without its Whisper, so the
``audio`` group holds ``beats/...`` only, under the same paths as in the dual encoder (a stage's rules and a
BEATs checkpoint's import read both alike); its output is BEATs' patches right-padded with zero rows to the
window's Whisper length as the dual encoder pads them, ``[n, max(Lw, Lb), Db]``, so that a window takes as many
tokens on every audio path (and Ola's 10-frame stacking divides BEATs' 1496 patches of 30 s, padded to 1500).
The Whisper config still sets the windows the data pipeline cuts (``frames``; 30 s, as Ola's).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from omnijax.media_tokens import beats_fbank_frames
from omnijax.models.audio import AudioConfig, WhisperEncoder
from omnijax.models.beats import MEL_BINS, BEATsConfig, BEATsEncoder


def aligned_length(whisper: AudioConfig, beats: BEATsConfig) -> int:
    """Rows per window out of the dual encoder (and of BEATs alone): the longer of Whisper's outputs and BEATs'
    patches of the window."""
    return max(whisper.output_length, beats.num_patches(beats_fbank_frames(whisper.frames)))


def pad_rows(x, length: int):
    """``x [n, L, D]`` right-padded with zero rows to ``[n, length, D]``."""
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))


def align_frames(speech, audio):
    """Ola's alignment: ``speech [n, Lw, Dw]``, ``audio [n, Lb, Db]`` -> ``[n, max(Lw, Lb), Dw + Db]``, the
    shorter sequence right-padded with zero rows, then concatenated on channels (speech first)."""
    length = max(speech.shape[1], audio.shape[1])
    return jnp.concatenate([pad_rows(speech, length), pad_rows(audio, length).astype(speech.dtype)], axis=-1)


class DualAudioEncoder(nn.Module):
    """The ``audio`` parameter group of a Whisper + BEATs model, or of BEATs alone (module docstring).

    ``encode_chunks(mel [b, c, n_mels, frames], fbank [b, c, fbank_frames, 128]) -> [b, c, L, Dw + Db]`` with
    ``L = aligned_length(cfg, beats_cfg)``; the chunks fold into the batch (each window encoded on its own).
    With ``speech=False`` the mel windows are not read (0 mel bins) and the output is ``[b, c, L, Db]``."""

    cfg: AudioConfig
    beats_cfg: BEATsConfig
    speech: bool = True

    def setup(self):
        if self.cfg.variant != "whisper":
            raise ValueError(f"the dual audio encoder pairs BEATs with Whisper (variant 'whisper'), got variant "
                             f"{self.cfg.variant!r}")
        if self.speech:
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
        audio = self.beats(fbank.reshape(b * c, *fbank.shape[2:]))  # [b * c, Lb, Db]
        if self.speech:
            speech = self.whisper.encode_chunks(mel)  # [b, c, Lw, Dw]
            out = align_frames(speech.reshape(b * c, *speech.shape[2:]), audio)
        else:  # BEATs' patches padded as the dual encoder pads them
            out = pad_rows(audio, aligned_length(self.cfg, self.beats_cfg))
        out = nn.with_logical_constraint(out, ("activation_batch", "activation_length", "activation_embed"))
        return out.reshape(b, c, *out.shape[1:])
