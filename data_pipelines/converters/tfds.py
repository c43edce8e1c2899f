"""TFDS datasets -> examples (`python -m data_pipelines.build tfds`).

The dataset must be prepared in array_record format; it is read with `tfds.data_source` (no TensorFlow
needed for Text and Tensor features; TFDS's Image and Audio features need TensorFlow to decode). The
user turn is the media placeholders, one per line, then `--text-field` (or the fixed `--prompt`); the
assistant turn is `--answer-field` (the first value when it is a list, as in VQA answers). Image
fields: encoded bytes or uint8 arrays `[H, W]`, `[H, W, C]` (or a list / `[N, H, W, C]` for several)
-> PNG. Audio fields: encoded bytes or arrays `[samples]` / `[samples, channels]` -> FLAC (int16 ->
16-bit, other dtypes -> 24-bit) at the feature's `sample_rate` or `--sampling-rate`. Nested fields are
named with `/` (`meta/caption`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from data_pipelines.converters.reencode import audio_media, flac_media, image_array_media, image_media
from data_pipelines.converters.writer import Skip
from data_pipelines.schema import PLACEHOLDERS, Example, Media, Turn


def _get_field(record: dict, name: str) -> Any:
    value = record
    for part in name.split("/"):
        value = value[part]
    return value


def _feature(features: Any, name: str, dataset: str) -> Any:
    feature = features
    try:
        for part in name.split("/"):
            feature = feature[part]
    except (KeyError, TypeError) as e:
        raise SystemExit(f"tfds: {dataset} has no field {name!r}; its features are:\n{features}") from e
    return feature


def _text(value: Any, what: str) -> str:
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            value = value.item()
        elif value.size:
            value = value.reshape(-1)[0]
        else:
            raise Skip("empty conversation", f"{what}: no text")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Skip("malformed entry", f"{what}: text is not UTF-8 ({e})") from e
    if isinstance(value, (list, tuple)):
        return _text(np.asarray(value, dtype=object), what)
    if not isinstance(value, str):
        raise Skip("malformed entry", f"{what}: expected text, got {type(value).__name__}")
    return value


def _tfds_images(value: Any, what: str) -> list[Media]:
    if isinstance(value, bytes):
        return [image_media(value, what)]
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind == "S":
        return [image_media(bytes(v), f"{what}[{i}]") for i, v in enumerate(array.reshape(-1))]
    if array.ndim == 4:
        return [image_array_media(a, f"{what}[{i}]") for i, a in enumerate(array)]
    return [image_array_media(array, what)]


def _tfds_audio(value: Any, sampling_rate: int | None, what: str) -> Media:
    if isinstance(value, np.ndarray) and (value.dtype == object or value.dtype.kind == "S") and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        return audio_media(value, what)
    if sampling_rate is None:
        raise Skip("unreadable media", f"{what}: sample array without a sampling rate; pass --sampling-rate")
    return flac_media(np.asarray(value), sampling_rate, what)


def tfds_items(args: argparse.Namespace) -> tuple[int, Iterator[Callable[[], Example]]]:
    import tensorflow_datasets as tfds

    try:
        data = tfds.data_source(args.name, data_dir=args.data_dir, split=args.split)
    except Exception as e:
        raise SystemExit(
            f"tfds: cannot open {args.name!r} split {args.split!r} under {args.data_dir}: {e}\n"
            "It must be prepared with file_format='array_record'."
        ) from e
    features = data.dataset_info.features
    for field in filter(None, (args.text_field, args.answer_field, args.image_field, args.audio_field, args.id_field)):
        _feature(features, field, args.name)
    sampling_rate = args.sampling_rate
    if args.audio_field:
        feature = _feature(features, args.audio_field, args.name)
        sampling_rate = sampling_rate or getattr(feature, "sample_rate", None)
        dtype = getattr(feature, "np_dtype", None)
        if sampling_rate is None and dtype is not None and np.issubdtype(dtype, np.number):
            raise SystemExit(
                f"tfds: {args.audio_field!r} holds sample arrays and its feature has no sample_rate; "
                "pass --sampling-rate"
            )
    source = args.source or args.name
    name = f"{args.name}/{args.split}"

    def item(index: int) -> Callable[[], Example]:
        def convert() -> Example:
            where = f"{name}[{index}]"
            record = data[index]
            media = []
            if args.image_field:
                media += _tfds_images(_get_field(record, args.image_field), f"{where} {args.image_field}")
            if args.audio_field:
                value = _get_field(record, args.audio_field)
                media.append(_tfds_audio(value, sampling_rate, f"{where} {args.audio_field}"))
            question = _text(_get_field(record, args.text_field), where) if args.text_field else (args.prompt or "")
            answer = _text(_get_field(record, args.answer_field), where)
            if not answer.strip():
                raise Skip("empty conversation", f"{where}: empty {args.answer_field!r}")
            lines = [PLACEHOLDERS[m.kind] for m in media if PLACEHOLDERS[m.kind] not in question]
            user = "\n".join(lines + ([question] if question else []))
            turns = [Turn("user", user, tuple(range(len(media)))), Turn("assistant", answer)]
            example_id = _text(_get_field(record, args.id_field), where) if args.id_field else where
            return Example(example_id, source, args.task, turns, media)

        return convert

    return len(data), (item(i) for i in range(len(data)))
