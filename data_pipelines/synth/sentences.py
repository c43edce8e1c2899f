"""omni-synth's words: the closed vocabulary, the grammar of the ASR sentences, and scenes described in words.

    sentence(rng)          -> "anna saw three cups near the tree" (the ASR sentences)
    describe(items)        -> "a red circle, a blue square and a green triangle"
    scene_items(scene)     -> [(colour, shape), ...] left to right
    article(word), plural(noun)
"""

from __future__ import annotations

import numpy as np

from data_pipelines.synth.scenes import COLOURS, SHAPES, pick

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
# The numbers the ASR sentences and the narrations say: a narration only uses words the speech data teaches.
SPOKEN_NUMBERS = range(2, 13)

# A closed vocabulary of about 150 common words for the ASR sentences, next to the shape, colour and
# number words: each word is heard often enough in a thousand utterances for a tiny model to learn it.
NOUNS = (
    "apple ball bird boat book box bread car cat chair cloud cup dog door egg fish flower garden hat horse "
    "house key lamp letter moon mountain paper park pencil phone river road school ship shoe sky star "
    "table teacher tower train tree window"
).split()
ADJECTIVES = "big small old new long short happy sad warm cold bright dark fast slow clean quiet".split()
VERBS_PAST = "saw found took made painted opened carried pushed watched cleaned".split()
VERBS_BASE = "open close carry push watch clean move find take paint".split()
PREPOSITIONS = "near behind under above beside inside".split()
NAMES = "anna ben clara david emma jack kate leo mia sam".split()
IRREGULAR_PLURALS = {"fish": "fish"}
PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")


def article(word: str) -> str:
    """The indefinite article for `word`."""
    return "an" if word[0] in "aeiou" else "a"


def describe(items: list[tuple[str, str]]) -> str:
    """[(colour, shape), ...] -> "a red circle, a blue square and a green triangle"."""
    parts = [f"{article(colour)} {colour} {shape}" for colour, shape in items]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_items(scene: dict) -> list[tuple[str, str]]:
    """The (colour, shape) of each shape of a scene, left to right."""
    return [(s["colour"], s["shape"]) for s in scene["shapes"]]


def plural(noun: str) -> str:
    """The plural of a noun of the vocabulary."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def sentence(rng: np.random.Generator) -> str:
    """A short English sentence from shape, colour and number words and a closed list of common words."""
    colour, shape, noun = pick(rng, list(COLOURS)), pick(rng, SHAPES), pick(rng, NOUNS)
    number = NUMBER_WORDS[pick(rng, SPOKEN_NUMBERS)]
    templates = (
        lambda: f"the {colour} {shape} is {pick(rng, PLACES)}",
        lambda: f"there are {number} {colour} {shape}s on the {noun}",
        lambda: f"{pick(rng, NAMES)} drew {article(colour)} {colour} {shape} next to the {noun}",
        lambda: f"the {pick(rng, ADJECTIVES)} {noun} {pick(rng, VERBS_PAST)} the {pick(rng, NOUNS)}",
        lambda: f"{pick(rng, NAMES)} {pick(rng, VERBS_PAST)} {number} {plural(noun)} {pick(rng, PREPOSITIONS)} the "
        f"{pick(rng, NOUNS)}",
        lambda: f"please {pick(rng, VERBS_BASE)} the {pick(rng, ADJECTIVES)} {noun}",
        lambda: f"the {noun} {pick(rng, PREPOSITIONS)} the {pick(rng, NOUNS)} is {pick(rng, ADJECTIVES)} and "
        f"{pick(rng, ADJECTIVES)}",
        lambda: f"{pick(rng, NAMES)} likes the {colour} {noun}",
    )
    return pick(rng, templates)()
