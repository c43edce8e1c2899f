"""Sentence-wise output, as Ola speaks while it writes: a growing answer is cut into sentences as soon
as each is complete, and each sentence can go to speech synthesis before the answer is finished.

A sentence ends after a run of ``.``, ``!`` or ``?`` (with any closing quotes or brackets) followed by
whitespace, or after a newline; the whitespace after its end belongs to it. A sentence is known to be
complete once the next one has begun (a non-space character), so ``3.5`` or ``...`` are not cut and
trailing spaces are not left over; what remains when the answer ends is the last sentence. The
sentences of an answer concatenate to the answer.

``espeak_callback(out_dir)`` speaks each sentence with eSpeak NG, omnijax's voice
(``data_pipelines.speech``), into 16 kHz WAV files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator

from data_pipelines import speech
from data_pipelines.audio import SAMPLING_RATE

_SENTENCE_END = re.compile(r"(?:[.!?]+[\"')\]]*\s+|\n\s*)(?=\S)")


def sentences(texts: Iterable[str]) -> Iterator[str]:
    """The sentences of a growing text, each as soon as it is complete (module docstring).

    ``texts``: successive decodings of one answer, each extending the one before (the text of its
    first 1, 2, 3, ... tokens), the last one the whole answer. Yields non-empty sentences in order;
    they concatenate to the last text.
    """
    done, text = 0, ""
    for text in texts:
        for end in _SENTENCE_END.finditer(text, done):
            yield text[done:end.end()]
            done = end.end()
    if done < len(text):
        yield text[done:]


def espeak_callback(out_dir: str, voice: str = "en", rate: int = 175,
                    pitch: int = 50) -> Callable[[int, str], str | None]:
    """An ``on_sentence(index, sentence)`` for ``OmniGenerator.stream``: speaks the sentence with eSpeak
    NG (``speech.synthesize_16k``; ``voice``, ``rate`` in words per minute, ``pitch`` 0-100) into
    ``out_dir/sentence_{index:03d}.wav``, 16 kHz mono 16-bit PCM, and returns the path. A sentence
    without a letter or digit (whitespace, punctuation) has nothing to say: no file, None."""
    import soundfile as sf

    os.makedirs(out_dir, exist_ok=True)

    def on_sentence(index: int, sentence: str) -> str | None:
        if not any(c.isalnum() for c in sentence):
            return None
        path = os.path.join(out_dir, f"sentence_{index:03d}.wav")
        sf.write(path, speech.synthesize_16k(sentence.strip(), voice, rate, pitch), SAMPLING_RATE, subtype="PCM_16")
        return path

    return on_sentence
