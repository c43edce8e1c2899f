"""omni-synth's pictures: scenes of coloured shapes on a plain background and videos of one shape crossing the
frame, sampled from a random stream and drawn without anti-aliasing (only the named colours appear).

    sample_scene(rng)   -> {"background": name, "shapes": [{"shape", "colour", "box": [x0, y0, x1, y1]}, ...]}
    render_scene(scene) -> pixels [64, 64, 3] uint8
    moving_shape(rng)   -> {"shape", "colour", "background", "direction", "boxes": one box per frame}
    render_video(motion) -> frames [8, 64, 64, 3] uint8
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
VIDEO_FRAMES = 8
VIDEO_FPS = 4

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (205, 205, 205), "dark grey": (60, 60, 60)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")


def pick(rng: np.random.Generator, items):
    """One of `items`, drawn from `rng` (one integer draw)."""
    return items[int(rng.integers(len(items)))]


def sample_scene(rng: np.random.Generator) -> dict:
    """1-3 shapes of distinct kinds and colours at non-overlapping places on a plain background."""
    count = int(rng.integers(1, 4))
    kinds = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:count]]
    colour_names = list(COLOURS)
    colours = [colour_names[i] for i in rng.permutation(len(colour_names))[:count]]
    background = pick(rng, list(BACKGROUNDS))
    while True:
        boxes = []
        for _ in range(count):
            side = int(rng.integers(14, 23))
            x0, y0 = (int(v) for v in rng.integers(2, IMAGE_SIZE - side - 2, size=2))
            boxes.append([x0, y0, x0 + side, y0 + side])
        if all(_apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            break
    shapes = [{"shape": k, "colour": c, "box": b} for k, c, b in zip(kinds, colours, boxes)]
    shapes.sort(key=lambda s: s["box"][0] + s["box"][2])  # left to right, the order captions use
    return {"background": background, "shapes": shapes}


def _apart(a: list[int], b: list[int], gap: int = 3) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], rgb: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)


def render_scene(scene: dict) -> np.ndarray:
    """The scene's pixels `[64, 64, 3]` uint8, drawn without anti-aliasing (only the named colours appear)."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(image)
    for s in scene["shapes"]:
        draw_shape(draw, s["shape"], s["box"], COLOURS[s["colour"]])
    return np.asarray(image)


def moving_shape(rng: np.random.Generator) -> dict:
    """A shape crossing the frame in one direction -> its motion (frames are drawn by `render_video`)."""
    shape, colour = pick(rng, SHAPES), pick(rng, list(COLOURS))
    direction = pick(rng, DIRECTIONS)
    side = int(rng.integers(12, 17))
    distance = int(rng.integers(28, IMAGE_SIZE - side - 8))
    margin = 4
    along = int(rng.integers(margin, IMAGE_SIZE - side - distance - margin + 1))  # start, on the axis of motion
    across = int(rng.integers(margin, IMAGE_SIZE - side - margin + 1))
    sign = 1 if direction in ("right", "down") else -1
    start = along if sign > 0 else along + distance
    positions = [start + sign * round(distance * t / (VIDEO_FRAMES - 1)) for t in range(VIDEO_FRAMES)]
    horizontal = direction in ("left", "right")
    corners = [(p, across) if horizontal else (across, p) for p in positions]
    return {
        "shape": shape,
        "colour": colour,
        "background": pick(rng, list(BACKGROUNDS)),
        "direction": direction,
        "boxes": [[x, y, x + side, y + side] for x, y in corners],
    }


def render_video(motion: dict) -> np.ndarray:
    """The frames `[8, 64, 64, 3]` uint8 of a `moving_shape` motion."""
    frames = []
    for box in motion["boxes"]:
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[motion["background"]])
        draw_shape(ImageDraw.Draw(image), motion["shape"], box, COLOURS[motion["colour"]])
        frames.append(np.asarray(image))
    return np.stack(frames)
