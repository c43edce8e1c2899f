"""Ask a trained model questions with media held in memory: a PIL image or an array, a waveform with its
sampling rate, a list of video frames (with their audio track).

    model = Model("workdirs/demo/ola/3b")                      # omnijax.experiment.load_model
    model.ask("What colour is the circle?", image=pil_image)   # -> 'red'
    model.ask("Please give the ASR results of the given speech.", audio=(waveform, 44100))
    model.ask("Which way does the shape move?", video=(frames, (track, 16000)))
    model.ask_many([dict(prompt=q, image=im) for q, im in pairs])

The media are encoded as the files a user would pass (``data_pipelines.media``: PNG, WAV, H.264 MP4) and the
prompt is prepared by the training pipeline's own code (``OmniGenerator``), exactly as
``python -m omnijax.tools.generate`` prepares a question from files: the same inputs give the same answer.
The user turn is the placeholders (``<image>`` per image, ``<video>`` per video followed by ``<audio>`` for
its track, ``<audio>`` per audio clip), a newline and the prompt; ``spoken_question`` asks the question as
speech instead (the turn ends in ``<audio>``, as ``Example.spoken_view`` writes Ola's spoken queries).
Greedy decoding; ``ask`` decodes token by token (``OmniGenerator.stream``), ``ask_many`` in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from data_pipelines import media as media_codec
from data_pipelines import schema
from omnijax.checkpoint import assets_of, load_model as load_params
from omnijax.errors import DamagedFileError
from omnijax.inference.omni import OmniGenerator, generation_config, media_unsupported, stage_prompt_options
from omnijax.models.llm import LLMConfig
from omnijax.models.omni import OmniConfig

VIDEO_FPS = 4.0  # the rate written into a video made from frames (the pipeline samples frames uniformly)


def chat_config(module) -> OmniConfig:
    """The ``OmniConfig`` of a loaded module: an omni model's own (omnijax omni, LLaVA-OneVision,
    Qwen2-Audio), or a text LLM's as an omni model without towers (the same ``llm`` params)."""
    cfg = getattr(module, "cfg", None)
    if isinstance(cfg, OmniConfig):
        return cfg
    if isinstance(cfg, LLMConfig):
        return OmniConfig(llm=cfg)
    raise ValueError(f"questions need an omni model or a language model, not a {type(module).__name__}; "
                     "generate from token ids instead (omnijax.inference.generate)")


def chat_example(items: Sequence[tuple[str, schema.Media]], prompt: str | None = None,
                 spoken_question: schema.Media | None = None) -> schema.Example:
    """One user turn: the placeholders of ``items`` ((kind, media) pairs, in order), a newline and ``prompt``;
    or, with ``spoken_question`` instead of a prompt, the question as the last audio item."""
    if (prompt is None) == (spoken_question is None):
        raise ValueError("give the question as a prompt or as a spoken question (one of them)")
    media = [m for _, m in items]
    placeholders = "".join(schema.PLACEHOLDERS[kind] for kind, _ in items)
    if spoken_question is not None:
        media.append(spoken_question)
        question = schema.PLACEHOLDERS["audio"]
    else:
        question = prompt
    text = f"{placeholders}\n{question}" if placeholders else question
    return schema.Example(id="question", source="question", task="chat",
                          turns=(schema.Turn("user", text, tuple(range(len(media)))),), media=tuple(media))


def image_media(image) -> schema.Media:
    """A PIL image or a uint8 array ``[h, w]`` / ``[h, w, 3]`` (RGB) -> a PNG item. A PIL image of a file that is
    cut short or damaged raises ``DamagedFileError`` naming the file."""
    if hasattr(image, "convert"):  # PIL
        try:
            image = np.asarray(image.convert("RGB"))  # PIL reads an opened file's pixels here
        except OSError as e:
            raise DamagedFileError(getattr(image, "filename", "") or "image=", f"the image does not decode ({e})",
                                   "open a whole image file (copy or export it again)") from e
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"image=: give a PIL image or a uint8 array [height, width] or [height, width, 3]; got "
                         f"{array.dtype} {array.shape}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return schema.Media("image", "png", media_codec.encode_png(np.ascontiguousarray(array)))


def audio_media(audio, what: str = "audio=:") -> schema.Media:
    """``(waveform, sampling_rate)``: float or int16 samples ``[samples]`` or ``[samples, channels]`` -> a WAV
    item (the pipeline averages the channels and resamples to 16 kHz, as for a file)."""
    if not (isinstance(audio, tuple | list) and len(audio) == 2 and np.isscalar(audio[1])):
        raise ValueError(f"{what} give audio as (waveform, sampling_rate), e.g. (samples, 16000)")
    waveform, rate = np.asarray(audio[0]), audio[1]
    if waveform.dtype not in (np.int16, np.float32, np.float64) or waveform.ndim not in (1, 2) or not waveform.size:
        raise ValueError(f"{what} the waveform must be float or int16 samples [samples] or [samples, channels]; got "
                         f"{waveform.dtype} {waveform.shape}")
    if waveform.ndim == 2 and waveform.shape[1] > waveform.shape[0]:
        raise ValueError(f"{what} the waveform is {waveform.shape}: samples come first ([samples, channels]); "
                         "transpose it")
    if not 1000 <= float(rate) <= 384_000:
        raise ValueError(f"{what} sampling rate {rate} Hz is not a plausible rate (1 kHz to 384 kHz)")
    if waveform.dtype == np.float64:
        waveform = waveform.astype(np.float32)
    return schema.Media("audio", "wav", media_codec.encode_wav(waveform, int(rate)))


def video_items(video) -> list[tuple[str, schema.Media]]:
    """``frames`` or ``(frames, (waveform, sampling_rate))``: uint8 frames ``[n, h, w, 3]`` (a list of arrays or
    PIL images) -> the video item (H.264 MP4 at ``VIDEO_FPS``) and, with a track, its audio item after it."""
    frames, track = video, None
    if isinstance(video, tuple) and len(video) == 2 and isinstance(video[1], tuple | list):
        frames, track = video
    frames = np.stack([np.asarray(f.convert("RGB")) if hasattr(f, "convert") else np.asarray(f) for f in frames])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video=: give uint8 RGB frames [n, height, width, 3] (or a list of them / of PIL images), "
                         f"optionally as (frames, (waveform, sampling_rate)); got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"video=: frames of {frames.shape[2]} x {frames.shape[1]} pixels; H.264 needs an even width "
                         "and height (crop or pad a pixel)")
    items = [("video", schema.Media("video", "mp4", media_codec.encode_mp4(frames, VIDEO_FPS), fps=VIDEO_FPS))]
    if track is not None:
        items.append(("audio", audio_media(track, "video=(frames, track):")))
    return items


def item_names(example: schema.Example) -> list[str]:
    """How errors name each media item of a question: 'the audio', or 'audio 2 of 3' when there are several."""
    kinds = [m.kind for m in example.media]
    return [f"the {k}" if kinds.count(k) == 1 else f"{k} {kinds[:i + 1].count(k)} of {kinds.count(k)}"
            for i, k in enumerate(kinds)]


def _many(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def question_example(prompt: str | None = None, *, image=None, audio=None, video=None,
                     spoken_question=None) -> schema.Example:
    """The example ``Model.ask`` answers: images, then videos (each with its track), then audio clips."""
    items = [("image", image_media(x)) for x in (_many(image) if image is not None else [])]
    if video is not None:
        items += video_items(video)
    if audio is not None:
        clips = audio if isinstance(audio, list) else [audio]
        items += [("audio", audio_media(a)) for a in clips]
    spoken = audio_media(spoken_question, "spoken_question=:") if spoken_question is not None else None
    return chat_example(items, prompt, spoken)


class Model:
    """A trained model to ask questions (module docstring). ``path``: a finished stage workdir, an omnijax
    model directory or a HF directory; the tokenizer is the one it carries (``tokenizer=`` another). Prompts
    are prepared with the stage's pipeline options (frames per video, ...), as long as the input makes them:
    at most ``max_prompt_len`` tokens (default: the model's positions less the new tokens), the media slots
    grown to the input (``OmniGenerator``), an audio item at most ``max_audio_windows`` windows (default:
    the model's, ``OmniConfig.max_audio_windows``; Ola's 25 of 30 s)."""

    def __init__(self, path: str, *, dtype: str = "float32", tokenizer: str | None = None,
                 max_prompt_len: int | None = None, video_frames: int | None = None,
                 max_audio_windows: int | None = None):
        self.path = path
        self.tokenizer = tokenizer or assets_of(path)
        if not self.tokenizer:
            raise ValueError(f"{path} carries no tokenizer: pass tokenizer=DIR (a HF tokenizer directory)")
        self.loaded = load_params(path, dtype=dtype, progress=False)
        self.options, _ = stage_prompt_options(path)  # a stage workdir: prompts as its batches were
        if video_frames is not None:
            self.options["video_frames"] = video_frames
        cfg = chat_config(self.loaded.module)
        if max_audio_windows is not None:
            cfg = cfg.replace(max_audio_windows=max_audio_windows)
        self.cfg = generation_config(cfg, self.options.get("video_frames"))
        self.max_prompt_len = max_prompt_len
        self._generators: dict[tuple[int, int], OmniGenerator] = {}

    def generator(self, batch_size: int = 1, max_new_tokens: int = 32) -> OmniGenerator:
        """The ``OmniGenerator`` for ``batch_size`` rows (built once per size)."""
        max_prompt_len = self.max_prompt_len or self.cfg.llm.max_position_embeddings - max_new_tokens
        key = (batch_size, max_prompt_len)
        if key not in self._generators:
            self._generators[key] = OmniGenerator(self.cfg, self.loaded.params, self.tokenizer,
                                                  max_prompt_len=max_prompt_len, batch_size=batch_size,
                                                  **self.options)
        return self._generators[key]

    def check_media(self, example: schema.Example, names: dict[str, str] | None = None) -> None:
        """A ``ValueError`` naming the argument (``names``: kind -> how the caller gave it) for media the model
        cannot take."""
        for kind in dict.fromkeys(m.kind for m in example.media):
            reason = media_unsupported(self.cfg, kind)
            if reason:
                arg = (names or {}).get(kind, f"{kind}=")
                raise ValueError(f"{arg}: {reason}; leave out {arg} or use a model that takes {kind}s")

    def stream(self, example: schema.Example, max_new_tokens: int = 32,
               on_sentence: Callable[[int, str], object] | None = None, *,
               names: dict[str, str] | None = None, items: Sequence[str] | None = None) -> Iterator[str]:
        """The answer to ``example`` sentence by sentence as it is written (``OmniGenerator.stream``). Errors
        name a kind of media as ``names`` does (kind -> how the caller gave it) and an item as ``items`` does
        (one per ``example.media``; default ``item_names``)."""
        self.check_media(example, names)
        return self.generator(1, max_new_tokens).stream(example, max_new_tokens, on_sentence,
                                                        names=items or item_names(example))

    def ask(self, prompt: str | None = None, *, image=None, audio=None, video=None, spoken_question=None,
            max_new_tokens: int = 32) -> str:
        """The greedy answer to one question (module docstring); ``image`` and ``audio`` may be lists of several."""
        example = question_example(prompt, image=image, audio=audio, video=video, spoken_question=spoken_question)
        return "".join(self.stream(example, max_new_tokens)).strip()

    def ask_many(self, questions: Sequence[dict], max_new_tokens: int = 32, batch_size: int = 8) -> list[str]:
        """Greedy answers to ``questions`` (each a dict of ``ask``'s arguments), ``batch_size`` per call."""
        examples = [question_example(**q) for q in questions]
        for example in examples:
            self.check_media(example)
        return [a.strip() for a in self.generator(batch_size, max_new_tokens).answer(examples, max_new_tokens)]
