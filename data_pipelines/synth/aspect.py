"""omni-synth's non-square pictures: wide (128 x 48), tall (48 x 128) and square (64 x 64) images whose answers
live in their geometry, which squashing the picture to a square distorts: a circle drawn in a wide picture
becomes an upright oval there, and the wide oval beside it -- as many times wider than high as the picture is
-- becomes a circle; the picture's own shape is lost; small shapes in a strip shrink to a few pixels. Ovals and
rectangles are stretched by that ratio (8:3) in every picture, so what a squashed picture shows is ambiguous:
an upright oval may be a wide picture's circle or a square picture's oval.

    sample_aspect_scene(rng, question) -> {"layout": "wide" | "tall" | "square", "size": [width, height],
                                           "background", "shapes": [{"shape", "colour", "box": [x0, y0, x1, y1]}]}
    render_aspect_scene(scene)          -> pixels [height, width, 3] uint8, drawn as `scenes` draws
    moving_form(rng)                    -> {"layout", "size", "background", "shape", "colour", "direction",
                                            "boxes": one box per frame}: one of FORMS crossing the frame
    render_aspect_video(motion)         -> frames [8, height, width, 3] uint8

`question` "form" draws one or two circles, ovals, squares or rectangles (ovals and rectangles stretched along
the picture's long side; in a square picture either way); "count" draws two to
six small shapes of one colour; "layout" either of those scenes. A moving form crosses a wide frame left or right,
a tall one up or down, a square one any way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.synth.scenes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, VIDEO_FRAMES, draw_shape, pick

LAYOUTS = {"wide": (128, 48), "tall": (48, 128), "square": (64, 64)}  # (width, height)
FORMS = ("circle", "oval", "square", "rectangle")
QUESTIONS = ("layout", "form", "count")
STRETCH = 128 / 48  # an oval's or a rectangle's long side over its short one: the wide picture's aspect ratio
_MARGIN, _GAP = 2, 3


def _form_size(rng: np.random.Generator, form: str, orientation: str) -> tuple[int, int]:
    """(width, height) of a shape in a picture of ``orientation`` (``LAYOUTS``' keys): circles and squares 14-26
    pixels; ovals and rectangles 10-14 pixels across their short side and `STRETCH` times that along the long one
    (the picture's; either way in a square one)."""
    if form in ("circle", "square"):
        side = int(rng.integers(14, 27))
        return side, side
    short = int(rng.integers(10, 15))
    wide = orientation == "wide" or (orientation == "square" and rng.random() < 0.5)
    long = int(round(short * STRETCH))
    return (long, short) if wide else (short, long)


def _place(rng: np.random.Generator, sizes: list[tuple[int, int]], layout: str) -> list[list[int]]:
    """Boxes of the given sizes at random places, inside the margins and `_GAP` pixels apart."""
    width, height = LAYOUTS[layout]
    while True:
        boxes = []
        for w, h in sizes:
            x0 = int(rng.integers(_MARGIN, width - w - _MARGIN + 1))
            y0 = int(rng.integers(_MARGIN, height - h - _MARGIN + 1))
            boxes.append([x0, y0, x0 + w, y0 + h])
        if all(_apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            return boxes


def _apart(a: list[int], b: list[int]) -> bool:
    return a[2] + _GAP <= b[0] or b[2] + _GAP <= a[0] or a[3] + _GAP <= b[1] or b[3] + _GAP <= a[1]


def sample_aspect_scene(rng: np.random.Generator, question: str) -> dict:
    """A picture for a question of kind `question` (QUESTIONS; module docstring)."""
    if question not in QUESTIONS:
        raise ValueError(f"unknown aspect question {question!r}; questions are: {', '.join(QUESTIONS)}")
    layout = pick(rng, list(LAYOUTS))
    background = pick(rng, list(BACKGROUNDS))
    if question == "layout":
        question = pick(rng, ("form", "count"))
    if question == "form":
        count = int(rng.integers(1, 3))
        forms = [pick(rng, FORMS) for _ in range(count)]
        colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:count]]
        boxes = _place(rng, [_form_size(rng, f, layout) for f in forms], layout)
    else:
        count = int(rng.integers(2, 7))
        forms = [pick(rng, SHAPES) for _ in range(count)]
        colours = [pick(rng, list(COLOURS))] * count
        sides = [int(v) for v in rng.integers(8, 12, size=count)]
        boxes = _place(rng, [(s, s) for s in sides], layout)
    shapes = [{"shape": f, "colour": c, "box": b} for f, c, b in zip(forms, colours, boxes)]
    return {"layout": layout, "size": list(LAYOUTS[layout]), "background": background, "shapes": shapes}


def _render(size: list[int], background: str, shapes: list[dict]) -> np.ndarray:
    image = Image.new("RGB", tuple(size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for s in shapes:
        drawn = {"oval": "circle", "rectangle": "square"}.get(s["shape"], s["shape"])
        draw_shape(draw, drawn, s["box"], COLOURS[s["colour"]])
    return np.asarray(image)


def render_aspect_scene(scene: dict) -> np.ndarray:
    """The scene's pixels `[height, width, 3]` uint8, without anti-aliasing (only the named colours appear)."""
    return _render(scene["size"], scene["background"], scene["shapes"])


def moving_form(rng: np.random.Generator) -> dict:
    """A circle, oval, square or rectangle crossing a wide, tall or square frame (module docstring)."""
    layout, shape, colour = pick(rng, list(LAYOUTS)), pick(rng, FORMS), pick(rng, list(COLOURS))
    width, height = LAYOUTS[layout]
    direction = pick(rng, {"wide": DIRECTIONS[:2], "tall": DIRECTIONS[2:], "square": DIRECTIONS}[layout])
    w, h = _form_size(rng, shape, layout)
    horizontal = direction in ("left", "right")
    length, side, room = (width, w, height - h) if horizontal else (height, h, width - w)
    margin = 4
    distance = int(rng.integers(16, length - side - 2 * margin + 1))  # at least 16: a 37-pixel oval in 64
    along = int(rng.integers(margin, length - side - distance - margin + 1))  # start, on the axis of motion
    across = int(rng.integers(_MARGIN, room - _MARGIN + 1))
    sign = 1 if direction in ("right", "down") else -1
    start = along if sign > 0 else along + distance
    positions = [start + sign * round(distance * t / (VIDEO_FRAMES - 1)) for t in range(VIDEO_FRAMES)]
    corners = [(p, across) if horizontal else (across, p) for p in positions]
    return {"layout": layout, "size": [width, height], "background": pick(rng, list(BACKGROUNDS)), "shape": shape,
            "colour": colour, "direction": direction, "boxes": [[x, y, x + w, y + h] for x, y in corners]}


def render_aspect_video(motion: dict) -> np.ndarray:
    """The frames `[8, height, width, 3]` uint8 of a `moving_form` motion."""
    return np.stack([_render(motion["size"], motion["background"],
                             [{"shape": motion["shape"], "colour": motion["colour"], "box": box}])
                     for box in motion["boxes"]])
