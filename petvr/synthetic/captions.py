"""Caption vocabulary and caption writing: image captions from a small grammar, video captions that name every event
in order, and ActivityNet-style event sentences."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .drawing import pick
from .videos import Event, VideoObject, VideoSpec, apply_event

if TYPE_CHECKING:
    from .images import ImageScene, SceneObject

CAPTIONS_PER_VIDEO = 5
MAX_CAPTION_WORDS = 24
"""Words plus punctuation marks; keeps every caption inside the 32-token text context of ``petvr-tiny``."""

SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "donut"),
    "diamond": ("diamond",),
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
BACKGROUND_WORDS = {"plain": ("plain",), "gradient": ("gradient", "fading"), "noise": ("noisy", "grainy"),
                    "stripes": ("striped",)}
COLUMN_NAMES = ("left", "centre", "right")
ROW_NAMES = ("top", "middle", "bottom")


def position_name(column: int, row: int) -> str:
    """Grid cell -> "top left", "left", "centre", "bottom", ..."""
    vertical = "" if row == 1 else ROW_NAMES[row]
    horizontal = "" if column == 1 else COLUMN_NAMES[column]
    return " ".join(word for word in (vertical, horizontal) if word) or "centre"


def _position_phrases(column: int, row: int) -> tuple[str, ...]:
    name = position_name(column, row)
    if name == "centre":
        return ("in the centre", "in the middle", "at the centre")
    if column != 1 and row != 1:
        return (f"in the {name} corner", f"at the {name}", f"in the {name}")
    if row == 1:
        return (f"on the {name}", f"at the {name} side", f"on the {name} side")
    return (f"at the {name}", f"near the {name}", f"at the {name} edge")


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _word_count(text: str) -> int:
    return len(text.split()) + sum(text.count(mark) for mark in ",;:.")


# ---------------------------------------------------------------------------------------------------------------------
# Image captions

def _object_phrase(rng: np.random.Generator, obj: SceneObject, with_size: bool) -> str:
    words = [pick(rng, SIZE_WORDS[obj.size])] if with_size else []
    return " ".join(words + [obj.colour, pick(rng, SHAPE_WORDS[obj.shape])])


def _relation(first: SceneObject, second: SceneObject, rng: np.random.Generator) -> str:
    """A true spatial relation of ``first`` to ``second`` from their grid cells."""
    options = []
    if first.row != second.row:
        options.append("above" if first.row < second.row else "below")
    if first.column != second.column:
        options.append("to the left of" if first.column < second.column else "to the right of")
    return pick(rng, options)


def image_caption(scene: ImageScene, rng: np.random.Generator) -> str:
    """One caption for a scene from a small grammar (synonyms, optional size and position, word-order variants)."""
    background = f" on a {pick(rng, BACKGROUND_WORDS[scene.background])} background" if rng.random() < 0.15 else ""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        where = pick(rng, _position_phrases(obj.column, obj.row))
        size, colour, shape = pick(rng, SIZE_WORDS[obj.size]), obj.colour, pick(rng, SHAPE_WORDS[obj.shape])
        full = _with_article(f"{size} {colour} {shape}")
        templates = (
            f"{full} {where}",
            f"{colour} {shape}, {size}, {where}",
            f"there is {full} {where}",
            f"{where}, {full}",
            f"{_with_article(f'{colour} {shape}')} {where}",
            f"a picture of {full}",
            f"{_with_article(f'{size} {shape}')} in {colour} {where}",
            f"{full} {where}{background}",
        )
        return templates[rng.integers(len(templates))]
    first, second = scene.objects
    a = _with_article(_object_phrase(rng, first, rng.random() < 0.6))
    b = _with_article(_object_phrase(rng, second, rng.random() < 0.6))
    where_a = pick(rng, _position_phrases(first.column, first.row))
    where_b = pick(rng, _position_phrases(second.column, second.row))
    templates = (
        f"{a} {_relation(first, second, rng)} {b}",
        f"{b} {_relation(second, first, rng)} {a}",
        f"{a} and {b}",
        f"{a} {where_a} and {b} {where_b}",
        f"two shapes: {a} and {b}",
        f"{a} {_relation(first, second, rng)} {b}{background}",
    )
    return templates[rng.integers(len(templates))]


# ---------------------------------------------------------------------------------------------------------------------
# Video captions

MOVE_WORDS = {
    "left": ("moves left", "moves to the left", "slides to the left", "goes left"),
    "right": ("moves right", "moves to the right", "slides to the right", "goes right"),
    "up": ("moves up", "goes up", "rises", "slides up"),
    "down": ("moves down", "goes down", "drops down", "slides down"),
}
VERB_WORDS = {
    "appear": ("appears", "shows up", "pops up", "comes into view"),
    "disappear": ("disappears", "vanishes", "fades away", "fades out"),
    "grow": ("grows", "gets bigger", "grows larger", "becomes large"),
    "shrink": ("shrinks", "gets smaller", "becomes small", "shrinks down"),
}
RECOLOUR_WORDS = ("turns {after}", "becomes {after}", "changes to {after}", "changes colour from {before} to {after}")


def _event_states(spec: VideoSpec) -> list[VideoObject]:
    """The target object's state just before each event (its colour and size name it in the captions)."""
    objects, states = list(spec.objects), []
    for event in spec.events:
        states.append(objects[event.target])
        objects[event.target] = apply_event(objects[event.target], event.kind, event.after)
    return states


def _verb_phrase(rng: np.random.Generator, event: Event, state: VideoObject, short: bool) -> str:
    if event.kind == "move":
        return MOVE_WORDS[event.direction][0 if short else rng.integers(4)]
    if event.kind == "recolour":
        template = RECOLOUR_WORDS[0 if short else rng.integers(len(RECOLOUR_WORDS))]
        return template.format(before=event.before, after=event.after)
    verb = VERB_WORDS[event.kind][0 if short else rng.integers(4)]
    if event.kind == "appear" and not short and rng.random() < 0.4:
        verb += " " + pick(rng, _position_phrases(state.column, state.row))
    return verb


def _clauses(rng: np.random.Generator, spec: VideoSpec, order: Sequence[int], short: bool,
             allow_pronoun: bool) -> dict[int, str]:
    """One clause per event, with articles by mention order in the sentence (``order``: events in surface order)."""
    states, mentioned, clauses, previous_target = _event_states(spec), set(), {}, None
    for index in order:
        event, state = spec.events[index], states[index]
        shape = SHAPE_WORDS[state.shape][0 if short else rng.integers(len(SHAPE_WORDS[state.shape]))]
        if allow_pronoun and event.target == previous_target and not short and rng.random() < 0.5:
            subject = "it"
        elif event.target in mentioned:
            subject = f"the {state.colour} {shape}" if short or rng.random() < 0.7 else f"the {shape}"
        else:
            with_size = not short and rng.random() < 0.3
            words = f"{pick(rng, SIZE_WORDS[state.size])} {state.colour} {shape}" if with_size \
                else f"{state.colour} {shape}"
            subject = _with_article(words)
        clauses[index] = f"{subject} {_verb_phrase(rng, event, state, short)}"
        mentioned.add(event.target)
        previous_target = event.target
    return clauses


def _sequence_sentence(rng: np.random.Generator, spec: VideoSpec, short: bool) -> str:
    """All events in one sentence, with connectives that make their order explicit."""
    count = len(spec.events)
    forward = list(range(count))
    if count == 1:
        return _clauses(rng, spec, forward, short, allow_pronoun=False)[0]
    if count == 2 and not short and rng.random() < 0.3:
        c = _clauses(rng, spec, [1, 0], short, allow_pronoun=False)
        return pick(rng, (f"{c[1]} after {c[0]}", f"{c[1]} once {c[0]}"))
    c = _clauses(rng, spec, forward, short, allow_pronoun=True)
    if short:
        return ", then ".join(c[i] for i in forward)
    if count == 2:
        return pick(rng, (f"{c[0]}, then {c[1]}", f"first {c[0]}, after that {c[1]}", f"{c[0]} and then {c[1]}",
                             f"{c[0]}, afterwards {c[1]}", f"{c[0]} before {c[1]}"))
    middle = ", ".join(c[i] for i in forward[1:-1])
    return pick(rng, (", then ".join(c[i] for i in forward),
                         f"first {c[0]}, then {middle}, and finally {c[count - 1]}",
                         f"{c[0]}, after that {middle}, and in the end {c[count - 1]}",
                         f"first {c[0]}, next {middle}, finally {c[count - 1]}"))


def video_captions(spec: VideoSpec, rng: np.random.Generator, count: int = CAPTIONS_PER_VIDEO) -> list[str]:
    """``count`` distinct paraphrases that name every event in order, each at most ``MAX_CAPTION_WORDS`` long."""
    captions: list[str] = []
    for _ in range(count * 20):
        sentence = _sequence_sentence(rng, spec, short=False)
        if _word_count(sentence) <= MAX_CAPTION_WORDS and sentence not in captions:
            captions.append(sentence)
            if len(captions) == count:
                return captions
    shortest = _sequence_sentence(rng, spec, short=True)
    return (captions + [shortest] * count)[:count]


def event_sentences(spec: VideoSpec, rng: np.random.Generator) -> list[str]:
    """One sentence per event (ActivityNet Captions style), in order, capitalised with a full stop."""
    clauses = _clauses(rng, spec, range(len(spec.events)), short=False, allow_pronoun=False)
    return [clauses[index][0].upper() + clauses[index][1:] + "." for index in range(len(spec.events))]
