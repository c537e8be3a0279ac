"""A synthetic "shapes" world for training and testing PixelRefer-Lite without real data.

`generate_scene(seed)` gives a short clip with per-object visible masks and ground truth;
`make_examples(scene, rng)` samples question/answer pairs about it; `SceneStream` yields frames
forever for a synthetic camera. Pure numpy + OpenCV, no ROS.
"""

from .texts import (
    ANSWERS,
    NOT_MOVING,
    PROMPTS,
    REGION,
    RELATION_PROMPTS,
    TASKS,
    TEMPORAL_TASKS,
    VOCABULARY,
    Example,
    answer_for,
    describe,
    make_examples,
    motion_phrase,
    prompt_for,
    words,
)
from .world import (
    COLOR_NAMES,
    COLORS,
    DIRECTIONS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    ObjectState,
    Scene,
    SceneObject,
    SceneStream,
    Sprite,
    StreamFrame,
    WorldConfig,
    generate_scene,
    make_background,
    render_frame,
)

__all__ = [
    "ANSWERS", "COLORS", "COLOR_NAMES", "DIRECTIONS", "MOTIONS", "NOT_MOVING", "PROMPTS",
    "REGION", "RELATION_PROMPTS", "SHAPES", "SIZES", "TASKS", "TEMPORAL_TASKS", "VOCABULARY",
    "Example", "ObjectSpec", "ObjectState", "Scene", "SceneObject", "SceneStream", "Sprite",
    "StreamFrame", "WorldConfig", "answer_for", "describe", "generate_scene", "make_background",
    "make_examples", "motion_phrase", "prompt_for", "render_frame", "words",
]
