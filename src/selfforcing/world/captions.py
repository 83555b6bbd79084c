"""Captions at two levels of detail, with varied but deterministic phrasing.

`short_caption` names each object's colour, shape and motion ("a red circle moves right and a green square
spins"); `detailed_caption` writes a sentence per object naming size, colour, shape, motion and speed, and
names the background.  A `variant` integer picks among synonyms and sentence templates; by default it is a
hash of the scene's discrete attributes, so a scene always gets the same caption and scenes that differ only
in position or phase share it.  Every phrase used here parses back with `prompts.parse_prompt` (tested).
"""

import numpy as np

from selfforcing.world.scene import Scene, WorldObject, attribute_key, stable_hash

SHAPE_WORDS = {
    "circle": ("circle", "circle", "disc", "ball"),
    "square": ("square", "square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond",),
    "cross": ("cross",),
    "ring": ("ring", "ring", "hoop"),
}
SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium-sized", "medium", "mid-sized"),
    "large": ("large", "big", "large"),
}
SPEED_WORDS = {
    "slow": ("slowly", "gently", "leisurely"),
    "normal": ("steadily", "at a steady pace", "at a moderate pace"),
    "fast": ("quickly", "rapidly", "swiftly"),
}
BACKGROUND_PHRASES = {
    "black": ("a plain black background", "a black backdrop", "a pitch black background"),
    "grey": ("a plain dark grey background", "a charcoal grey backdrop", "a dark gray background"),
    "navy": ("a plain dark blue background", "a navy backdrop", "a deep navy blue background"),
    "gradient": ("a dark blue to purple gradient background", "a dark vertical gradient backdrop",
                 "a navy to purple gradient background"),
    "checker": ("a grey checkerboard background", "a dark checkered backdrop", "a checkerboard background"),
    "stripes": ("a dark striped background", "a background of dark horizontal stripes",
                "a backdrop of grey stripes"),
}

# Short motion phrases (no speed).  Diagonals are built from their two axes below.
_SHORT_AXIS = {
    "right": ("moves right", "drifts right", "slides to the right", "goes right"),
    "left": ("moves left", "drifts left", "slides to the left", "goes left"),
    "up": ("moves up", "rises", "floats upward", "goes up"),
    "down": ("moves down", "falls", "sinks", "drifts downward"),
}
_SHORT_OTHER = {
    "bounce": ("bounces around", "bounces off the walls", "ricochets around the frame"),
    "spin": ("spins", "rotates", "spins in place", "twirls"),
    "pulse": ("pulses", "grows and shrinks", "throbs", "pulsates"),
    "orbit": ("orbits", "circles around", "travels in a loop", "loops around"),
}
# Detailed motion phrases; {s} is the speed phrase.
_DETAILED_AXIS = {
    "right": ("moves {s} to the right", "drifts {s} toward the right", "travels {s} rightward"),
    "left": ("moves {s} to the left", "drifts {s} toward the left", "travels {s} leftward"),
    "up": ("moves {s} upward", "rises {s}", "floats {s} toward the top"),
    "down": ("moves {s} downward", "falls {s}", "sinks {s} toward the bottom"),
}
_DETAILED_OTHER = {
    "bounce": ("bounces {s} off the walls", "bounces around the frame {s}", "ricochets {s} between the walls"),
    "spin": ("spins {s} clockwise in place", "rotates {s} clockwise", "twirls {s} clockwise around its centre"),
    "pulse": ("grows and shrinks {s}", "pulses {s} in size", "pulsates {s}, growing and shrinking"),
    "orbit": ("orbits {s} clockwise around a fixed point", "circles {s} clockwise around a point",
              "travels {s} in a clockwise loop"),
}
_DIAGONAL_SHORT = ("moves {v} and to the {h}", "drifts toward the {vh} {h}", "moves diagonally {v} and {h}")
_DIAGONAL_DETAILED = ("moves {s} diagonally {v} and to the {h}", "drifts {s} toward the {vh} {h}",
                      "travels {s} diagonally {v} and {h}")
_UPPER_LOWER = {"up": "upper", "down": "lower"}
_CONNECTORS = ("", "", "Meanwhile, ", "At the same time, ")


class _Chooser:
    """Deterministic choices from a variant integer (numpy's generator is stable across platforms)."""

    def __init__(self, variant: int):
        self.rng = np.random.default_rng(variant)

    def __call__(self, options: tuple):
        return options[int(self.rng.integers(len(options)))]


def caption_variant(scene: Scene) -> int:
    """The default phrasing variant of a scene: a stable hash of its discrete attributes."""
    return stable_hash(attribute_key(scene))


def with_article(phrase: str) -> str:
    """Prefix "a" or "an" as English wants it ("an orange ring")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _motion_phrase(motion: str, choose: _Chooser, speed_phrase: str | None) -> str:
    """A motion phrase, short (speed_phrase None) or detailed (with the speed phrase inserted)."""
    if "_" in motion:                                           # diagonal, e.g. "up_right"
        v, h = motion.split("_")
        template = choose(_DIAGONAL_SHORT if speed_phrase is None else _DIAGONAL_DETAILED)
        return template.format(v=v, h=h, vh=_UPPER_LOWER[v], s=speed_phrase)
    if speed_phrase is None:
        return choose({**_SHORT_AXIS, **_SHORT_OTHER}[motion])
    return choose({**_DETAILED_AXIS, **_DETAILED_OTHER}[motion]).format(s=speed_phrase)


def _short_object(obj: WorldObject, choose: _Chooser) -> str:
    noun = with_article(f"{obj.colour} {choose(SHAPE_WORDS[obj.shape])}")
    return f"{noun} {_motion_phrase(obj.motion, choose, None)}"


def _detailed_object(obj: WorldObject, choose: _Chooser) -> str:
    noun = with_article(f"{choose(SIZE_WORDS[obj.size])} {obj.colour} {choose(SHAPE_WORDS[obj.shape])}")
    return f"{noun} {_motion_phrase(obj.motion, choose, choose(SPEED_WORDS[obj.speed]))}"


def short_caption(scene: Scene, variant: int | None = None) -> str:
    """One lower-case clause per object (colour, shape, motion), joined with "and".

    Args:
        scene: the scene to describe.
        variant: picks the synonyms; None uses `caption_variant(scene)`.
    """
    choose = _Chooser(caption_variant(scene) if variant is None else variant)
    return " and ".join(_short_object(o, choose) for o in scene.objects)


def detailed_caption(scene: Scene, variant: int | None = None) -> str:
    """One sentence per object (size, colour, shape, motion, speed) and the background.

    Example: "A small red circle moves slowly to the right on a dark blue to purple gradient background.
    Meanwhile, a large green square bounces quickly off the walls."

    Args:
        scene: the scene to describe.
        variant: picks the template and synonyms; None uses `caption_variant(scene)`.
    """
    choose = _Chooser(caption_variant(scene) if variant is None else variant)
    template = int(choose.rng.integers(3))
    background = choose(BACKGROUND_PHRASES[scene.background])
    clauses = [_detailed_object(o, choose) for o in scene.objects]
    sentences = []
    for i, clause in enumerate(clauses):
        if i == 0 and template == 0:
            sentences.append(f"{clause} on {background}.")
        elif i == 0 and template == 1:
            sentences.append(f"On {background}, {clause}.")
        else:
            connector = choose(_CONNECTORS) if i > 0 else ""
            sentences.append(f"{connector}{clause}.")
    if template == 2:
        sentences.append(f"The scene is set against {background}.")
    return " ".join(s[0].upper() + s[1:] for s in sentences)
