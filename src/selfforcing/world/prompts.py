"""Read scene attributes out of free-ish text, and the deterministic prompt extender built on it.

`parse_prompt` is a small rule-based reader shared by the extender and the evaluator:

1. Normalise: lower-case; rewrite a few multi-word idioms ("from left to right" -> "right", "in a circle"
   -> "orbit", "at high speed" -> "quickly").
2. Background: a word such as "background", "backdrop", "gradient", "checkerboard" or "stripes" anchors
   a background phrase (the descriptive words just before it, or just after "background is"); those words
   are consumed, so "dark blue" there never colours an object.
3. Objects: every shape noun (or "object", "thing", "shape", "item") starts an object.  The adjectives right
   before the noun and the words after it, up to the next object's adjectives, describe it.  Without any
   noun, a colour word makes one implicit object ("something crimson drifting left").
4. Each object's words map through the synonym tables below.  A bounce, spin, pulse or orbit word wins over
   direction words; otherwise one horizontal and one vertical direction word make a diagonal.

The extender fills whatever is missing with `DEFAULTS` and renders `detailed_caption`.
"""

import re
from dataclasses import dataclass, replace

import numpy as np

from selfforcing.world.captions import detailed_caption
from selfforcing.world.scene import Scene, place_object, stable_hash
from selfforcing.world.vocab import COLOURS


def _invert(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """{canonical: synonyms} -> {word: canonical}."""
    return {word: canonical for canonical, words in table.items() for word in words}


_COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet", "ruby", "cherry", "vermilion"),
    "green": ("green", "lime", "emerald", "jade"),
    "blue": ("blue", "cobalt", "sapphire", "azure", "ultramarine"),
    "yellow": ("yellow", "gold", "golden", "lemon"),
    "cyan": ("cyan", "aqua", "turquoise", "teal"),
    "magenta": ("magenta", "fuchsia", "pink", "purple", "violet"),
    "orange": ("orange", "amber", "tangerine"),
    "white": ("white", "ivory", "snowy"),
}
COLOUR_SYNONYMS = _invert(_COLOUR_WORDS)
SHAPE_SYNONYMS = _invert({
    "circle": ("circle", "disc", "disk", "ball", "dot", "sphere", "orb"),
    "square": ("square", "box", "cube", "block", "tile"),
    "triangle": ("triangle", "pyramid"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "cross": ("cross",),
    "ring": ("ring", "hoop", "donut", "doughnut", "annulus"),
})
GENERIC_NOUNS = frozenset({"object", "thing", "shape", "item"})
SIZE_SYNONYMS = _invert({
    "small": ("small", "tiny", "little", "mini", "smallish", "wee"),
    "medium": ("medium", "mid", "midsize", "average"),
    "large": ("large", "big", "huge", "giant", "enormous", "massive"),
})
SPEED_SYNONYMS = _invert({
    "slow": ("slowly", "slow", "gently", "gentle", "leisurely", "lazily", "gradually", "calmly", "crawls",
             "creeps", "unhurriedly"),
    "normal": ("steadily", "steady", "moderate", "moderately", "normally", "regular"),
    "fast": ("quickly", "quick", "fast", "rapidly", "rapid", "swiftly", "swift", "speedily", "briskly",
             "zooms", "zips", "races", "darts", "hurries"),
})
MOTION_SYNONYMS = _invert({      # motions that win over any direction word
    "bounce": ("bounce", "bounces", "bouncing", "bounced", "ricochet", "ricochets", "ricocheting", "rebounds"),
    "spin": ("spin", "spins", "spinning", "rotate", "rotates", "rotating", "rotation", "twirl", "twirls",
             "twirling", "whirls", "whirling"),
    "pulse": ("pulse", "pulses", "pulsing", "pulsate", "pulsates", "pulsating", "throb", "throbs",
              "throbbing", "grow", "grows", "growing", "shrink", "shrinks", "shrinking", "expands",
              "contracts", "breathes", "swells"),
    "orbit": ("orbit", "orbits", "orbiting", "circles", "circling", "loop", "loops", "looping", "revolve",
              "revolves", "revolving"),
})
DIRECTION_SYNONYMS = _invert({
    "right": ("right", "rightward", "rightwards", "east", "eastward"),
    "left": ("left", "leftward", "leftwards", "west", "westward"),
    "up": ("up", "upward", "upwards", "rise", "rises", "rising", "climbs", "climbing", "ascends",
           "ascending", "top", "upper", "north"),
    "down": ("down", "downward", "downwards", "fall", "falls", "falling", "sinks", "sinking", "drops",
             "dropping", "descends", "descending", "bottom", "lower", "south"),
})
DIAGONAL_WORDS = frozenset({"diagonal", "diagonally"})
DEFAULT_DIAGONAL = "down_right"          # "moves diagonally" without a direction

# Background words, by priority: the first class any word of the phrase hits wins.
BACKGROUND_CLASSES = (
    ("checker", {"checker", "checkered", "checkerboard", "chequered", "checked", "checkers"}),
    ("stripes", {"stripes", "striped", "stripe", "stripy"}),
    ("gradient", {"gradient"}),
    ("navy", {"navy", "blue"}),
    ("grey", {"grey", "gray", "charcoal"}),
    ("black", {"black", "dark"}),
)
BACKGROUND_ANCHORS = frozenset({"background", "backdrop", "gradient", "checkerboard", "checkered", "chequered",
                                "checker", "stripes", "striped"})
_PHRASE_BOUNDARY = frozenset({"a", "an", "the", "on", "across", "over", "against", "is", "in", "with", "of",
                              "and", "behind", "before", "set", "front"})
_ARTICLES = frozenset({"a", "an", "the", "another", "one"})
_ADJECTIVE_FILLER = frozenset({"bright", "vivid", "pure", "light", "deep", "solid", "sized", "shiny", "glowing",
                               "moving", "drifting", "sliding", "floating", "travelling", "traveling"})

# Idioms rewritten before tokenising; directions map top -> up, bottom -> down.
_END = {"left": "left", "right": "right", "top": "up", "bottom": "down"}
_IDIOMS = (
    (re.compile(r"\bfrom (?:the )?(?:left|right|top|bottom)\w* (?:side |edge )?to (?:the )?(left|right|top|bottom)\b"),
     lambda m: f" {_END[m.group(1)]} "),
    (re.compile(r"\b(?:in|along) (?:a |an )?(?:circles?|circular (?:path|motion|orbit)|round path)\b"),
     lambda m: " orbit "),
    (re.compile(r"\bround and round\b"), lambda m: " orbit "),
    (re.compile(r"\b(?:at )?(?:a |an )?(?:high|fast|quick|rapid|great) (?:speed|pace|rate)\b"),
     lambda m: " quickly "),
    (re.compile(r"\b(?:at )?(?:a |an )?(?:low|slow|gentle|leisurely) (?:speed|pace|rate)\b"), lambda m: " slowly "),
    (re.compile(r"\b(?:at )?(?:a |an )?(?:medium|normal|moderate|average|regular|steady|constant) "
                r"(?:speed|pace|rate)\b"), lambda m: " steadily "),
)

# Colour words of free wording kept out of every training caption (one per palette colour), so that a test of
# words the captions never use stays honest; `vary_colour_words` draws only from the others.
HELDOUT_COLOUR_WORDS = frozenset({"crimson", "emerald", "azure", "lemon", "turquoise", "fuchsia", "amber", "ivory"})
TRAINING_COLOUR_WORDS = {
    colour: tuple(w for w in words if w != colour and w not in HELDOUT_COLOUR_WORDS)
    for colour, words in _COLOUR_WORDS.items()
}
_OBJECT_COLOUR = re.compile(r"\b(" + "|".join(COLOURS) + r")(?=[ -]+(?:" + "|".join(SHAPE_SYNONYMS) + r")\b)")


def vary_colour_words(caption: str, rng: np.random.Generator, p: float) -> str:
    """Replace each object's palette colour name ("red" in "red circle") with probability p by one of its
    synonyms ("scarlet", "ruby", ...; never a `HELDOUT_COLOUR_WORDS` one), drawn from `rng`. A training-caption
    augmentation: the model meets several words for each colour, and so leans on what the text encoder's
    embeddings of colour words share rather than on one token each. Colour words of backgrounds ("dark blue
    background") are left alone: only a colour name right before a shape word is an object's."""
    def swap(match: re.Match) -> str:
        return str(rng.choice(TRAINING_COLOUR_WORDS[match.group(1)])) if rng.random() < p else match.group(1)

    return _OBJECT_COLOUR.sub(swap, caption)


DEFAULTS = {"shape": "circle", "colour": "white", "size": "medium", "motion": "right", "speed": "normal",
            "background": "black"}
"""What the extender assumes when a prompt leaves an attribute out.  A missing colour is white, or, when another
object is already white, the first palette colour no other object uses."""


@dataclass(frozen=True)
class PartialObject:
    """The attributes a prompt gave for one object; None where it said nothing."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    motion: str | None = None
    speed: str | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    """Everything `parse_prompt` found: the objects in order of mention, and the background if named."""

    objects: tuple[PartialObject, ...] = ()
    background: str | None = None

    @property
    def empty(self) -> bool:
        return not self.objects and self.background is None


def _tokenise(text: str) -> list[str]:
    text = text.lower()
    for pattern, repl in _IDIOMS:
        text = pattern.sub(repl, text)
    return re.findall(r"[a-z]+", text)


def _background_class(words: list[str]) -> str | None:
    for name, keys in BACKGROUND_CLASSES:
        if any(w in keys for w in words):
            return name
    return None


def _parse_background(tokens: list[str], used: list[bool]) -> str | None:
    """Find and consume background phrases; return the background class they name, if any."""
    all_bg_words = set().union(*(keys for _, keys in BACKGROUND_CLASSES)) | BACKGROUND_ANCHORS | {"plain"}
    words: list[str] = []
    for i, tok in enumerate(tokens):
        if tok not in BACKGROUND_ANCHORS:
            continue
        j = i
        while j > 0 and tokens[j - 1] not in _PHRASE_BOUNDARY and _is_descriptor(tokens[j - 1]):
            j -= 1
        phrase = list(range(j, i + 1))
        if _background_class([tokens[m] for m in phrase]) is None:    # "the background is plain black"
            k = i + 1
            while k < len(tokens) and (tokens[k] in _PHRASE_BOUNDARY or tokens[k] in all_bg_words):
                phrase.append(k)
                k += 1
        for m in phrase:
            used[m] = True
        words += [tokens[m] for m in phrase]
    return _background_class(words)


def _is_descriptor(token: str) -> bool:
    """Words that may sit inside a background phrase: anything but object nouns and motion/speed words."""
    return not (token in SHAPE_SYNONYMS or token in GENERIC_NOUNS or token in MOTION_SYNONYMS
                or token in DIRECTION_SYNONYMS or token in SPEED_SYNONYMS or token in DIAGONAL_WORDS)


def _is_adjective(token: str) -> bool:
    return (token in COLOUR_SYNONYMS or token in SIZE_SYNONYMS or token in SPEED_SYNONYMS
            or token in MOTION_SYNONYMS or token in _ADJECTIVE_FILLER)


def _is_manner(token: str) -> bool:
    return token in SPEED_SYNONYMS or token in MOTION_SYNONYMS or token in _ADJECTIVE_FILLER


def _first(words: list[str], table: dict[str, str]) -> str | None:
    return next((table[w] for w in words if w in table), None)


def _parse_motion(words: list[str]) -> str | None:
    special = _first(words, MOTION_SYNONYMS)
    if special is not None:
        return special
    directions = [DIRECTION_SYNONYMS[w] for w in words if w in DIRECTION_SYNONYMS]
    horizontal = next((d for d in directions if d in ("left", "right")), None)
    vertical = next((d for d in directions if d in ("up", "down")), None)
    if horizontal and vertical:
        return f"{vertical}_{horizontal}"
    if horizontal or vertical:
        return horizontal or vertical
    return DEFAULT_DIAGONAL if any(w in DIAGONAL_WORDS for w in words) else None


def _describe(shape_word: str | None, words: list[str]) -> PartialObject:
    return PartialObject(shape=SHAPE_SYNONYMS.get(shape_word), colour=_first(words, COLOUR_SYNONYMS),
                         size=_first(words, SIZE_SYNONYMS), motion=_parse_motion(words),
                         speed=_first(words, SPEED_SYNONYMS))


def parse_prompt(text: str) -> ParsedPrompt:
    """The scene attributes a prompt names (see the module docstring for the rules).

    Args:
        text: a short or detailed prompt, in free-ish English.
    Returns:
        ParsedPrompt; `.empty` when nothing was recognised.
    """
    tokens = _tokenise(text)
    used = [False] * len(tokens)
    background = _parse_background(tokens, used)
    nouns = [i for i, t in enumerate(tokens) if not used[i] and (t in SHAPE_SYNONYMS or t in GENERIC_NOUNS)]
    if not nouns:                        # "something crimson drifting left": one implicit object
        words = [t for t, u in zip(tokens, used) if not u]
        obj = _describe(None, words)     # needs a colour, so stray words like "up" alone are not an object
        return ParsedPrompt((obj,) if obj.colour else (), background)
    starts = []                          # where each object's run of adjectives begins
    for k, i in enumerate(nouns):
        floor = nouns[k - 1] + 1 if k else 0
        j = i
        while j > floor and not used[j - 1] and _is_adjective(tokens[j - 1]):
            j -= 1
        # A motion or speed word opens the run only after an article ("a fast red ball"); otherwise it
        # ends the previous object's description ("a donut rotating, a teal rhombus").
        while j < i and _is_manner(tokens[j]) and j > 0 and tokens[j - 1] not in _ARTICLES:
            j += 1
        starts.append(j if k else 0)     # words before the first object describe it too
    objects = []
    for k, i in enumerate(nouns):
        end = starts[k + 1] if k + 1 < len(nouns) else len(tokens)
        words = [tokens[m] for m in range(starts[k], end) if not used[m] and m != i]
        objects.append(_describe(tokens[i], words))
    return ParsedPrompt(tuple(objects), background)


def complete(parsed: ParsedPrompt) -> tuple[list[tuple[str, str, str, str, str]], str]:
    """Fill the attributes a parse left out with `DEFAULTS`.

    Returns:
        per-object (shape, colour, size, motion, speed) and the background.
    """
    given = {o.colour for o in parsed.objects if o.colour}
    attributes = []
    for obj in parsed.objects:
        colour = obj.colour
        if colour is None:
            colour = next((c for c in (DEFAULTS["colour"],) + COLOURS if c not in given), DEFAULTS["colour"])
            given.add(colour)
        filled = replace(obj, colour=colour, **{f: DEFAULTS[f] for f in ("shape", "size", "motion", "speed")
                                                 if getattr(obj, f) is None})
        attributes.append((filled.shape, filled.colour, filled.size, filled.motion, filled.speed))
    return attributes, parsed.background or DEFAULTS["background"]


def scene_from_prompt(text: str, rng: np.random.Generator | None = None) -> Scene:
    """A renderable scene for a prompt: parsed attributes, `DEFAULTS` for the rest, random placement.

    Args:
        text: the prompt.
        rng: draws positions and phases; None seeds one from a stable hash of the text.
    Raises:
        ValueError: if the prompt names no object.
    """
    parsed = parse_prompt(text)
    if not parsed.objects:
        raise ValueError(f"cannot find an object in prompt {text!r}")
    rng = np.random.default_rng(stable_hash(text)) if rng is None else rng
    attributes, background = complete(parsed)
    return Scene(tuple(place_object(rng, *a) for a in attributes), background)


def extend_prompt(short: str) -> str:
    """Deterministic prompt extension: parse, fill `DEFAULTS`, render `detailed_caption`.

    Returns the input unchanged when it names no object (a background alone is not enough).  Example:
    "a crimson ball drifting to the left quickly" -> "On a black backdrop, a medium red disc travels rapidly
    leftward." (the wording is a deterministic function of the attributes).
    """
    parsed = parse_prompt(short)
    if not parsed.objects:
        return short
    return detailed_caption(scene_from_prompt(short))
