"""Generate from a model.

Token ids in, token ids out (any language model, sampling optional):

    python -m omnijax.tools.generate --model PATH --input-ids 1,2,3 --max-new-tokens N
           [--temperature T --top-p P --seed S] [--stop-ids 2,7] [--dtype bfloat16]

Stops at the model's ``eos_token_id`` (from its config / generation config) unless ``--stop-ids`` is
given. The last line printed is the generated ids, space-separated.

A question with media (an omni model, or a text LLM without media), greedy, printed sentence by
sentence as it is written:

    python -m omnijax.tools.generate --model PATH [--image a.png] [--audio b.wav] [--video c.mp4]
           (--prompt "What is in the picture?" | --spoken-question q.wav)
           [--max-new-tokens N] [--speak-dir DIR] [--tokenizer DIR] [--max-prompt-len L] [--video-frames K]
           [--max-audio-windows W]

The user turn is the media placeholders (``<image>``, ``<audio>``, ``<video>``, in the order of the
flags, each repeatable), a newline and the prompt; ``--spoken-question`` asks the question as speech
instead (the turn ends in ``<audio>`` with the recording, as ``Example.spoken_view`` writes Ola's
spoken queries). The prompt is prepared as the training pipeline prepares examples
(``omnijax.inference.omni``), the media slots grown to the files (an audio file may be as long as the
model takes: ``max_audio_windows`` windows, Ola's 25 of 30 s = 12.5 min; ``--max-audio-windows`` to change
it; a longer one is refused in seconds, exit status 2). ``--speak-dir`` speaks each
sentence with eSpeak NG into ``DIR/sentence_000.wav``, ... (16 kHz mono).

PATH is a HF model directory, an omnijax model directory or a finished omni stage workdir; the
tokenizer is the one it carries (``--tokenizer`` to choose another). A media file that is cut short or does not
decode is refused in one line naming it (exit status 2; ``OMNIJAX_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

from data_pipelines import schema
from data_pipelines.features import MediaError, check_decodes
from data_pipelines.speech import SpeechSynthesisError
from omnijax.checkpoint import assets_of, load_model
from omnijax.errors import DamagedFileError, report
from omnijax.inference import generate
from omnijax.inference.chat import Model, chat_example


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from None


def default_stop_ids(path: str, cfg) -> list[int]:
    assets = assets_of(path)
    gen = os.path.join(assets, "generation_config.json") if assets else None
    eos = cfg.eos_token_id
    if gen and os.path.exists(gen):
        with open(gen) as f:
            eos = json.load(f).get("eos_token_id", eos)
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


class _Media(argparse.Action):
    """``--image/--audio/--video PATH``: appends (kind, path) to one list, so the flags keep their order."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (self.const, values)])


def _media(kind: str, path: str, flag: str) -> schema.Media:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    found = schema.sniff_format(data)
    formats = [f for f in schema.FORMATS[kind] if f != "jpeg_frames"]
    if found not in formats:
        raise ValueError(f"{flag} {path}: {kind} files must be {' or '.join(formats)}, this one is "
                         f"{found or 'of no known format'}; convert it first")
    media = schema.Media(kind, found, data)
    try:
        check_decodes(media)
    except MediaError as e:
        raise DamagedFileError(path, str(e), f"{flag} takes a whole {' or '.join(formats)} file: copy or export it "
                                             "again") from e
    return media


def build_example(media: list[tuple[str, str]], prompt: str | None = None,
                  spoken_question: str | None = None) -> schema.Example:
    """The example the chat flags describe (``omnijax.inference.chat.chat_example``): one user turn with the
    media placeholders in the flags' order, a newline and ``prompt``; with ``spoken_question`` (a WAV/FLAC
    path) instead of ``prompt``, the question as speech. ``media``: (kind, path) pairs. Raises
    FileNotFoundError or ValueError naming the flag, ``DamagedFileError`` naming a file that does not decode."""
    if (prompt is None) == (spoken_question is None):
        raise ValueError("give the question as --prompt TEXT or as --spoken-question WAV (one of them)")
    items = [(kind, _media(kind, path, f"--{kind}")) for kind, path in media]
    spoken = _media("audio", spoken_question, "--spoken-question") if spoken_question is not None else None
    return chat_example(items, prompt, spoken)


def _chat(args) -> int:
    from omnijax.inference.sentences import espeak_callback

    if args.temperature != 0.0 or args.top_p != 1.0 or args.stop_ids is not None:
        raise ValueError("--temperature, --top-p and --stop-ids go with --input-ids; --prompt decodes greedily "
                         "and stops at <|im_end|>")
    example = build_example(args.media or [], args.prompt, args.spoken_question)
    model = Model(args.model, dtype=args.dtype, tokenizer=args.tokenizer, max_prompt_len=args.max_prompt_len,
                  video_frames=args.video_frames, max_audio_windows=args.max_audio_windows)
    items = [f"{kind} {path!r}" for kind, path in args.media or []]
    if args.spoken_question:
        items.append(f"spoken question {args.spoken_question!r}")
    names = {kind: f"--{kind}" for kind, _ in args.media or []}
    if args.spoken_question:
        names["audio"] = names.get("audio", "--spoken-question")
    speak = espeak_callback(args.speak_dir) if args.speak_dir else None
    for sentence in model.stream(example, args.max_new_tokens, on_sentence=speak, names=names, items=items):
        print(sentence, end="", flush=True)
    print()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnijax.tools.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF or omnijax model directory, or an omni stage workdir")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--input-ids", type=_ids, help="prompt token ids, e.g. 1,2,3")
    query.add_argument("--prompt", help="the question (a chat turn, after any media)")
    query.add_argument("--spoken-question", metavar="WAV", help="the question as speech (WAV or FLAC)")
    for kind in ("image", "audio", "video"):
        parser.add_argument(f"--{kind}", dest="media", action=_Media, const=kind, metavar="PATH",
                            help=f"{kind} file ({', '.join(f for f in schema.FORMATS[kind] if f != 'jpeg_frames')}) "
                                 "before the question; repeatable, in order")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (--input-ids)")
    parser.add_argument("--top-p", type=float, default=1.0, help="(--input-ids)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-ids", type=_ids, help="stop token ids (default: the model's eos; --input-ids)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--speak-dir", metavar="DIR", help="speak each sentence into DIR/sentence_000.wav, ...")
    parser.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the model's)")
    parser.add_argument("--max-prompt-len", type=int,
                        help="most prompt tokens, media tokens included (default: the model's positions less "
                             "--max-new-tokens)")
    parser.add_argument("--video-frames", type=int,
                        help="frames sampled per video (default: the stage's, else the pipeline's)")
    parser.add_argument("--max-audio-windows", type=int, metavar="W",
                        help="most windows an audio file may take (default: the model's max_audio_windows; "
                             "Ola: 25 of 30 s = 12.5 min)")
    args = parser.parse_args(argv)
    if args.input_ids is None:
        try:
            return _chat(args)
        except (ValueError, FileNotFoundError, SpeechSynthesisError) as e:
            return report(e)
    if args.media or args.speak_dir:
        parser.error("--image/--audio/--video and --speak-dir go with --prompt or --spoken-question, not --input-ids")
    try:
        loaded = load_model(args.model, dtype=args.dtype, progress=False)
        stop = args.stop_ids if args.stop_ids is not None else default_stop_ids(args.model, loaded.cfg)
        out = generate(loaded.module, loaded.params, [args.input_ids], max_new_tokens=args.max_new_tokens,
                       stop_token_ids=stop, temperature=args.temperature, top_p=args.top_p,
                       rng=jax.random.key(args.seed))
    except (ValueError, FileNotFoundError) as e:
        return report(e)
    print(" ".join(str(t) for t in out.tokens[0, : out.lengths[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
