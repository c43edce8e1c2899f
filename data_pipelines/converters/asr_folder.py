"""LibriSpeech-layout folders -> ASR examples (`python -m data_pipelines.build asr-dir`).

The layout: `SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt`, lines `UTTID TRANSCRIPT`, audio
`UTTID.flac` (or `.wav`) beside it. User turn: `<audio>\\n` + Ola's ASR prompt ("Please give the ASR
results of the given speech."); assistant turn: the transcript as written (LibriSpeech is upper case
without punctuation; normalise at evaluation, e.g. in WER, not here).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from data_pipelines.converters.reencode import audio_media, read_bytes
from data_pipelines.converters.writer import Skip
from data_pipelines.schema import PLACEHOLDERS, Example, Turn

ASR_PROMPT = "Please give the ASR results of the given speech."  # Ola paper, appendix (stage 3)


def asr_items(root: str, source: str | None, task: str, prompt: str) -> list[Callable[[], Example]]:
    """One item per line of every `*.trans.txt` under `root` (sorted walk, so the order is stable)."""
    if not os.path.isdir(root):
        raise SystemExit(f"asr-dir: {root} is not a folder")
    source = source or os.path.basename(os.path.normpath(root))
    items = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".trans.txt")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        items.append(_asr_item(folder, f"{path}:{number}", line, source, task, prompt))
    if not items:
        raise SystemExit(
            f"asr-dir: no *.trans.txt transcripts under {root} (expected SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt)"
        )
    return items


def _asr_item(folder: str, where: str, line: str, source: str, task: str, prompt: str) -> Callable[[], Example]:
    def convert() -> Example:
        utt_id, _, transcript = line.strip().partition(" ")
        transcript = transcript.strip()
        if not transcript:
            raise Skip("empty conversation", f"{where}: utterance {utt_id} has no transcript")
        candidates = [os.path.join(folder, utt_id + suffix) for suffix in (".flac", ".wav")]
        path = next((p for p in candidates if os.path.exists(p)), None)
        if path is None:
            raise Skip("missing media file", f"{where}: {candidates[0]} does not exist")
        audio = audio_media(read_bytes(path, where), path)
        turns = [Turn("user", f"{PLACEHOLDERS['audio']}\n{prompt}", (0,)), Turn("assistant", transcript)]
        return Example(utt_id, source, task, turns, [audio])

    return convert
