"""Questions, answers and descriptions for the shapes world, from fixed templates.

Every prompt refers to objects with the literal placeholder `<region>`, one per object and in
the order of `Example.object_ids`. Answers are lower case without punctuation. All words that
can appear in a prompt or an answer are listed in `VOCABULARY` (split texts with `words`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .world import COLOR_NAMES, MOTIONS, SHAPES, SIZES, Scene

REGION = "<region>"
TASKS: tuple[str, ...] = ("describe", "color", "shape", "size", "relation", "moving", "direction")
TEMPORAL_TASKS: tuple[str, ...] = ("moving", "direction")  # need a clip of >= 2 frames

PROMPTS: dict[str, str] = {
    "describe": "Describe <region>.",
    "color": "What color is <region>?",
    "shape": "What shape is <region>?",
    "size": "What size is <region>?",
    "moving": "Is <region> moving?",
    "direction": "Which way is <region> moving?",
}
# Relation questions come in two mirrored forms; both belong to the task "relation".
RELATION_PROMPTS: dict[str, str] = {
    "left": "Is <region> to the left of <region>?",
    "right": "Is <region> to the right of <region>?",
}
YES, NO = "yes", "no"
NOT_MOVING = "not moving"

# The closed set of answers of every task but "describe" (whose answers are `describe(...)`).
ANSWERS: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES,
    "shape": SHAPES,
    "size": SIZES,
    "relation": (YES, NO),
    "moving": (YES, NO),
    "direction": (*MOTIONS[1:], NOT_MOVING),
}

# Every word of every prompt and answer (tests check that this is exactly what the templates,
# `describe` and ANSWERS can produce). Punctuation and the placeholder are words of their own.
VOCABULARY: tuple[str, ...] = (
    # placeholder and punctuation
    "<region>", "?", ".",
    # question words
    "describe", "what", "color", "shape", "size", "is", "to", "the", "of", "which", "way",
    # shapes
    "circle", "square", "triangle", "star", "cross",
    # colours
    "red", "orange", "yellow", "green", "cyan", "blue", "purple", "white",
    # sizes
    "small", "large",
    # motion and position
    "moving", "staying", "still", "not", "left", "right", "up", "down",
    # the rest of the answers
    "a", "yes", "no",
)

_WORD = re.compile(r"<region>|[a-z]+|[?.]")


def words(text: str) -> list[str]:
    """Split a prompt or answer into vocabulary words (lower-cased; spaces dropped)."""
    return _WORD.findall(text.lower())


class _HasAttributes(Protocol):
    shape: str
    color: str
    size: str
    motion: str


def motion_phrase(motion: str) -> str:
    """"moving left" ... "moving down", or "staying still"."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}")
    return "staying still" if motion == "still" else f"moving {motion}"


def describe(obj: _HasAttributes, with_motion: bool = True) -> str:
    """"a small red triangle moving left" / "a large blue circle staying still".

    Without motion (single frames): "a small red triangle".
    """
    text = f"a {obj.size} {obj.color} {obj.shape}"
    return f"{text} {motion_phrase(obj.motion)}" if with_motion else text


def prompt_for(task: str, side: str = "left") -> str:
    """The prompt of a task; `side` picks the "left of" or "right of" relation question."""
    if task == "relation":
        return RELATION_PROMPTS[side]
    if task not in PROMPTS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return PROMPTS[task]


def answer_for(task: str, scene: Scene, ids: Sequence[int], frame: int = 0,
               side: str = "left") -> str:
    """The ground-truth answer of `task` about objects `ids` (two for "relation") at `frame`.

    Raises ValueError where the question has no answer: a relation that is ambiguous at that
    frame, or a temporal question about a single-frame scene.
    """
    if task == "relation":
        if len(ids) != 2 or ids[0] == ids[1]:
            raise ValueError("a relation question needs two different objects")
        left = scene.left_of(ids[0], ids[1], frame)
        if left is None:
            raise ValueError(f"objects {tuple(ids)} are too close in x at frame {frame}")
        if side not in RELATION_PROMPTS:
            raise ValueError(f"side must be one of {tuple(RELATION_PROMPTS)}")
        return YES if left == (side == "left") else NO
    if len(ids) != 1:
        raise ValueError(f"task {task!r} is about one object")
    obj = scene.objects[ids[0]]
    if task in TEMPORAL_TASKS and scene.num_frames < 2:
        raise ValueError(f"task {task!r} needs a clip of at least two frames")
    if task == "describe":
        return describe(obj, with_motion=scene.num_frames > 1)
    if task in ("color", "shape", "size"):
        return str(getattr(obj, task))
    if task == "moving":
        return NO if obj.motion == "still" else YES
    if task == "direction":
        return NOT_MOVING if obj.motion == "still" else obj.motion
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


@dataclass(frozen=True)
class Example:
    """One training / evaluation question about a scene."""

    task: str
    prompt: str  # with one `<region>` per entry of object_ids, in that order
    answer: str
    object_ids: tuple[int, ...]
    frames: tuple[int, ...]  # the frames the question is about (relation: a single frame)

    @property
    def question(self) -> str:
        return self.prompt


def make_examples(scene: Scene, rng: np.random.Generator, tasks: Sequence[str] = TASKS,
                  per_task: int = 1) -> list[Example]:
    """Sample `per_task` examples of each task in `tasks` (in that order) for `scene`.

    Tasks that cannot be asked about this scene are skipped: temporal ones on a single frame,
    "relation" when no two objects are ever clearly left/right of each other. Relation examples
    name the (single) frame where they hold; the others name every frame.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; expected some of {TASKS}")
    all_frames = tuple(range(scene.num_frames))
    rel = scene.relations
    candidates = np.argwhere(rel >= 0) if scene.num_objects > 1 else np.zeros((0, 3), int)
    examples: list[Example] = []
    for task in tasks:
        if task in TEMPORAL_TASKS and scene.num_frames < 2:
            continue
        if task == "relation" and len(candidates) == 0:
            continue
        for _ in range(per_task):
            if task == "relation":
                t, i, j = (int(v) for v in candidates[rng.integers(len(candidates))])
                side = "left" if rng.random() < 0.5 else "right"
                examples.append(Example(task, RELATION_PROMPTS[side],
                                        answer_for(task, scene, (i, j), t, side), (i, j), (t,)))
            else:
                i = int(rng.integers(scene.num_objects))
                examples.append(Example(task, PROMPTS[task], answer_for(task, scene, (i,)),
                                        (i,), all_frames))
    return examples
