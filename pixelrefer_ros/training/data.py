"""Training data for the shapes model: tokenizer, questions and preprocessed scenes.

Everything a training step needs is a pure function of (seed, step), so a run is reproducible
and a batch can be built in another process. The pixels go through exactly the preprocessing of
the node's incremental path (`RegionPipeline.global_features` / `object_tokens`): per frame the
336² squashed image, per (object, frame) `prepare_regions` on that frame alone (own 224 local
crop) and `patchify` with num_images=1. Only the ViT weights change during training.

Question mix per scene (F random frames of the clip, 2..8, timestamps relative to the first):
- video mode over the F frames, per object: two of "moving", "direction", "describe" (with the
  motion phrase) and one of "color" / "shape" / "size";
- image mode on each of those frames, per object: two of "color", "shape", "size", "describe"
  (without motion, like `texts.describe(with_motion=False)`), plus a "relation" question per
  frame where two objects are clearly apart.
Two curricula break the symmetric plateaus a small LLM otherwise sits on (measured: relation
and motion losses stayed at chance for 550 steps, even on clean synthetic position tokens):
- early in the phase (`left_only`) relation questions are only "left of": "yes" then follows
  one comparison, whereas the 50/50 "left"/"right" mix makes the answer an XOR of the
  comparison and the question word, which gives no first-order gradient;
- a share of the clips (`P_ENDPOINT_CLIP`) is just the first and last frame, the same
  two-block comparison as a relation and the largest displacement.
The last phase ("focus", `focus_questions`) asks mostly those two kinds, over clips that always
span the first and last frame (a subset of frames close together may show no motion at all,
which makes "moving" a noisy label), with a few of every other task so nothing is forgotten.
Motion is never asked in image mode: a single frame carries no motion, and the evaluation checks
that the model is near chance there. A share of "describe" questions uses the node's default
prompts (`prompt.DEFAULT_PROMPT_IMAGE` / `DEFAULT_PROMPT_VIDEO`) so the node's defaults work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from tokenizers import Tokenizer, normalizers

from pixelrefer_ros.model import prompt as prompts
from pixelrefer_ros.model.checkpoint_writer import word_level_tokenizer
from pixelrefer_ros.model.config import PreprocessConfig
from pixelrefer_ros.model.preprocess import global_image, patchify, prepare_regions
from pixelrefer_ros.model.prompt import TOKENS_PER_REGION
from pixelrefer_ros.model.tokenizer import TextTokenizer
from pixelrefer_ros.synthetic import (
    ANSWERS,
    COLOR_NAMES,
    PROMPTS,
    RELATION_PROMPTS,
    SHAPES,
    SIZES,
    Scene,
    WorldConfig,
    answer_for,
    describe,
    generate_scene,
)

PHASES = ("answers", "vision", "crops", "focus")  # index enters the batch rng: never reorder
CROP_MAX_MARGIN = 5  # cells of background kept around the mask in the "crops" phase: 1..this
CROP_FRAMES = 2  # frames per scene in the "crops" phase (every object in each)
SUB_CELLS = 4  # per-cell mask target: coverage of a SUB_CELLS x SUB_CELLS split of the patch
HELD_OUT_SEED = 1_000_000  # training scenes use seeds below this, evaluation at or above
IMAGE_ONLY_TASKS = ("color", "shape", "size")
P_DEFAULT_PROMPT = 0.15  # share of "describe" questions asked with the node's default prompt
# Image questions are short (~55 tokens) and give every (object, frame) crop its own signal.
IMAGE_TASKS_PER_REGION = 2
MAX_RELATIONS_PER_FRAME = 1
FOCUS_RELATIONS_PER_FRAME = 1
RELATION_P_MIDDLE = 0.5  # focus relations: on the first, last and each middle frame with this
P_FOCUS_VIDEO_REPLAY = 0.25  # video prompts are the focus phase's main cost
P_ENDPOINT_CLIP = 0.3  # share of "answers" clips that are just the first and last frame
# Video prompts are long (F x 38 tokens per object) and dominate the LLM's cost, so each object
# gets this many of its four video questions per scene.
VIDEO_TASKS_PER_OBJECT = 2
WORLD = WorldConfig()  # the default world: the one the node's synthetic camera shows
PREPROCESS = PreprocessConfig()  # the loader's preprocessing constants (none are in config.json)


# ----------------------------------------------------------------------------- tokenizer

def vocabulary_texts() -> list[str]:
    """Every text the model may read or write: prompts, answers, chat and timestamp syntax."""
    answers = [w for values in ANSWERS.values() for w in values]
    return [
        *PROMPTS.values(), *RELATION_PROMPTS.values(), *answers,
        "a small large staying still moving",  # the words of `describe`
        prompts.DEFAULT_PROMPT_IMAGE, prompts.DEFAULT_PROMPT_VIDEO, prompts.relation_prompt(3),
        "user assistant",  # chat template
        "[Time 0.5:,]", " ".join("0123456789"),  # video blocks: "[Time 1.2:<REGION>...,...]"
    ]


def build_tokenizer() -> Tokenizer:
    """Word-level tokenizer over `vocabulary_texts`, lower-casing its input.

    The chat specials (`<|im_start|>`, `<REGION>`, ...) are added tokens matched before the
    normaliser, so lower-casing only folds "What"/"what" onto one word.
    """
    scratch = word_level_tokenizer([])
    pre = scratch.pre_tokenizer
    assert pre is not None
    words = {w for text in vocabulary_texts() for w, _ in pre.pre_tokenize_str(text.lower())}
    tok = word_level_tokenizer(sorted(words - {"\n"}))
    tok.normalizer = normalizers.Lowercase()
    return tok


# ----------------------------------------------------------------------------- questions

@dataclass(frozen=True)
class Question:
    """One question about a scene. `frames` are scene frame indices, shared by every object;
    image mode has exactly one frame."""

    task: str
    mode: str  # "image" | "video"
    prompt: str  # user text with one `<region>` per object
    answer: str
    objects: tuple[int, ...]
    frames: tuple[int, ...]


def relative_times(scene: Scene, frames: Sequence[int]) -> list[float]:
    """Seconds since the first used frame, as the node sends them (runtime/worker.py)."""
    t = scene.timestamps[list(frames)]
    return [float(v) for v in t - t[0]]


def chat_text(q: Question, scene: Scene, tokens_per_region: int = TOKENS_PER_REGION) -> str:
    """The full prompt string: `pipeline.build_prompt` of the image or video format, with
    `tokens_per_region` `<REGION>` tokens per object and frame (config `mask_num`)."""
    if q.mode == "image":
        return prompts.image_prompt(q.prompt, len(q.objects), tokens_per_region)
    stamps = relative_times(scene, q.frames)
    return prompts.video_prompt(q.prompt, [stamps] * len(q.objects), tokens_per_region)


def describe_prompt(mode: str, rng: np.random.Generator | None) -> str:
    if rng is not None and rng.random() < P_DEFAULT_PROMPT:
        return prompts.DEFAULT_PROMPT_VIDEO if mode == "video" else prompts.DEFAULT_PROMPT_IMAGE
    return PROMPTS["describe"]


def object_question(scene: Scene, task: str, obj: int, frames: Sequence[int], mode: str,
                    rng: np.random.Generator | None = None) -> Question:
    """A one-object question; "describe" names the motion only in video mode."""
    if task == "describe":
        answer = describe(scene.objects[obj], with_motion=mode == "video")
        text = describe_prompt(mode, rng)
    else:
        answer = answer_for(task, scene, (obj,))
        text = PROMPTS[task]
    return Question(task, mode, text, answer, (obj,), tuple(int(f) for f in frames))


def relation_questions(scene: Scene, frame: int, rng: np.random.Generator,
                       limit: int, p_right: float = 0.5) -> list[Question]:
    """Up to `limit` image-mode "relation" questions about pairs unambiguous at `frame`,
    each "right of" with probability `p_right`, else "left of"."""
    pairs = np.argwhere(scene.relations[frame] >= 0)  # [N, 2] ordered pairs (i, j)
    out = []
    for k in rng.permutation(len(pairs))[:limit]:
        i, j = (int(v) for v in pairs[k])
        side = "left" if rng.random() < 1.0 - p_right else "right"
        answer = answer_for("relation", scene, (i, j), frame, side)
        out.append(Question("relation", "image", RELATION_PROMPTS[side], answer, (i, j),
                            (frame,)))
    return out


def training_questions(scene: Scene, frames: Sequence[int], rng: np.random.Generator,
                       left_only: bool = False) -> list[Question]:
    """The question mix of the module docstring for `scene` seen at `frames`."""
    qs: list[Question] = []
    for obj in range(scene.num_objects):
        attribute = IMAGE_ONLY_TASKS[int(rng.integers(len(IMAGE_ONLY_TASKS)))]
        video_tasks = ("moving", "direction", "describe", attribute)
        for k in rng.choice(len(video_tasks), VIDEO_TASKS_PER_OBJECT, replace=False):
            qs.append(object_question(scene, video_tasks[k], obj, frames, "video", rng))
    image_tasks = (*IMAGE_ONLY_TASKS, "describe")
    for t in frames:
        for obj in range(scene.num_objects):
            for k in rng.choice(len(image_tasks), IMAGE_TASKS_PER_REGION, replace=False):
                qs.append(object_question(scene, image_tasks[k], obj, (t,), "image", rng))
        qs.extend(relation_questions(scene, t, rng, MAX_RELATIONS_PER_FRAME,
                                     p_right=0.0 if left_only else 0.5))
    return qs


def spanning_frames(rng: np.random.Generator, num_frames: int,
                    p_middle: float = 0.5) -> list[int]:
    """The first and last frame plus each frame between with probability `p_middle` (sorted):
    the whole displacement is always visible, as in the evaluation's full clip. One draw per
    middle frame whatever `p_middle`, so the rng stream does not depend on it."""
    middle = [f for f in range(1, num_frames - 1) if rng.random() < p_middle]
    return [0, *middle, num_frames - 1]


def focus_questions(scene: Scene, rng: np.random.Generator, p_right: float = 0.5,
                    p_middle: float = 0.5) -> list[Question]:
    """The "focus" phase's mix for one scene: per object "direction", "moving" and "describe"
    (which names the motion) in video mode over one clip (`spanning_frames` with `p_middle`),
    plus with probability P_FOCUS_VIDEO_REPLAY one of colour / shape / size; per object one
    image question on one frame of the clip (replay, so that the attributes stay right); and
    up to FOCUS_RELATIONS_PER_FRAME relations ("right of" with probability `p_right`) on
    each frame of a second draw with RELATION_P_MIDDLE, so that the short clips of the early
    steps do not also cut the relation questions (a run whose clips and relations shrank
    together learnt neither relation nor motion by step 2,750)."""
    frames = spanning_frames(rng, scene.num_frames, p_middle)
    relation_frames = spanning_frames(rng, scene.num_frames, RELATION_P_MIDDLE)
    image_replay = (*IMAGE_ONLY_TASKS, "describe")
    qs: list[Question] = []
    for obj in range(scene.num_objects):
        tasks = ["direction", "moving", "describe"]
        if rng.random() < P_FOCUS_VIDEO_REPLAY:
            tasks.append(IMAGE_ONLY_TASKS[int(rng.integers(len(IMAGE_ONLY_TASKS)))])
        for task in tasks:
            qs.append(object_question(scene, task, obj, frames, "video", rng))
        frame = frames[int(rng.integers(len(frames)))]
        task = image_replay[int(rng.integers(len(image_replay)))]
        qs.append(object_question(scene, task, obj, (frame,), "image", rng))
    for t in relation_frames:
        qs.extend(relation_questions(scene, t, rng, FOCUS_RELATIONS_PER_FRAME, p_right))
    return qs


def without_pixels(scene: Scene) -> Scene:
    """`scene` with empty images and masks (frame count kept): what the question builders
    read, at a few kB instead of ~3 MB, for the focus phase's cache of scenes."""
    # copies: an empty slice of an array is a view that keeps the whole array alive (3 MB a
    # scene; a 1,000-scene bank held 4 GB before these copies)
    return replace(scene, frames=scene.frames[:, :0, :0].copy(),
                   masks=scene.masks[:, :, :0, :0].copy(),
                   background=scene.background[:0, :0].copy())


OPPOSITE_MOTION = {"still": "still", "left": "right", "right": "left", "up": "down",
                   "down": "up"}


def reversed_in_time(scene: Scene) -> Scene:
    """The same clip played backwards: frame t shows what frame T-1-t showed, and every object
    moves the opposite way (stamps stay increasing).

    The focus phase asks half of its scenes this way (its cached tokens are read in reverse,
    `region_index(..., reverse=True)`). Measured: on 300 cached scenes without it, the LLM
    learnt each object's motion by heart (direction 1.00 on those scenes, 0.33 on held-out
    ones); reversed, the same object moves both ways, so only the clip says which.
    """
    objects = [replace(o, motion=OPPOSITE_MOTION[o.motion], centers=o.centers[::-1],
                       centroids=o.centroids[::-1], bboxes=o.bboxes[::-1],
                       visible_area=o.visible_area[::-1], in_frame_area=o.in_frame_area[::-1],
                       full_area=o.full_area[::-1])
               for o in scene.objects]
    return replace(scene, frames=scene.frames[::-1], masks=scene.masks[::-1], objects=objects,
                   relations=scene.relations[::-1])


# ----------------------------------------------------------------------------- preprocessing

@dataclass
class RegionInput:
    """What `ObjectTokenizer.pool_object` needs besides the crop features, plus the region's
    ground truth for the training-only auxiliary heads (`train.AuxHeads`)."""

    obj: int
    frame: int  # scene frame index
    mask_grid: np.ndarray  # float32 [gh, gw]
    box: tuple[int, int, int, int]
    orig_hw: tuple[int, int]
    labels: tuple[int, int, int]  # indices into SHAPES, COLOR_NAMES, SIZES
    geometry: tuple[float, float, float, float]  # visible centroid x, y and box w, h over W, H


def region_truth(scene: Scene, obj: int, frame: int) -> tuple[tuple[int, int, int],
                                                               tuple[float, ...]]:
    """(class labels, normalised geometry) of object `obj` in `frame`, for `RegionInput`."""
    o = scene.objects[obj]
    labels = (SHAPES.index(o.shape), COLOR_NAMES.index(o.color), SIZES.index(o.size))
    cx, cy = o.centroids[frame]
    x0, y0, x1, y1 = o.bboxes[frame]
    w, h = scene.width, scene.height
    return labels, (float(cx) / w, float(cy) / h, float(x1 - x0) / w, float(y1 - y0) / h)


@dataclass
class EncodedQuestion:
    task: str
    mode: str
    ids: np.ndarray  # int64 [T]: prompt, answer, <|im_end|>
    num_prompt: int  # ids[:num_prompt] is the prompt; the rest is the target
    blocks: tuple[int, ...]  # region indices spliced in order (object-major, then frame)


@dataclass
class SceneSample:
    """One scene ready for the training forward.

    Images in `grids` / `pixel_values` order: the F global images (one per frame of `frames`),
    then the (crop, local) pair of every region: region r's crop is image F + 2r.
    """

    seed: int
    frames: tuple[int, ...]
    pixel_values: np.ndarray  # float32 [P, 3*14*14], all images packed
    grids: list[tuple[int, int]]
    regions: list[RegionInput]
    questions: list[EncodedQuestion]


def encode_question(tokenizer: TextTokenizer, q: Question, scene: Scene,
                    region_of: dict[tuple[int, int], int],
                    tokens_per_region: int = TOKENS_PER_REGION) -> EncodedQuestion:
    prompt_ids = tokenizer.encode(chat_text(q, scene, tokens_per_region))
    target = [*tokenizer.encode(q.answer), tokenizer.eos_id]
    blocks = tuple(region_of[(obj, f)] for obj in q.objects for f in q.frames)
    return EncodedQuestion(q.task, q.mode, np.asarray(prompt_ids + target, dtype=np.int64),
                           len(prompt_ids), blocks)


def region_index(num_objects: int, frames: Sequence[int],
                 reverse: bool = False) -> dict[tuple[int, int], int]:
    """(object, frame) -> position of that region in a scene's regions: object-major, then
    frame, the order of `preprocess_scene` and of `train.token_bank`. `reverse`: the regions
    of `reversed_in_time(scene)`'s frame k are those of the scene's frame T-1-k."""
    n = len(frames)
    return {(obj, int(f)): obj * n + (n - 1 - k if reverse else k)
            for obj in range(num_objects) for k, f in enumerate(frames)}


def preprocess_scene(scene: Scene, frames: Sequence[int], questions: Sequence[Question],
                     tokenizer: TextTokenizer, cfg: PreprocessConfig,
                     tokens_per_region: int = TOKENS_PER_REGION) -> SceneSample:
    """Patchify every image the questions need (all objects at all `frames`)."""
    packed, grids = [], []
    for f in frames:
        pv, grid = patchify(global_image(scene.frames[f], cfg), 1, cfg)
        packed.append(pv)
        grids.append(grid)
    regions: list[RegionInput] = []
    for obj in range(scene.num_objects):
        for f in frames:
            r = prepare_regions([scene.frames[f]], [scene.masks[f, obj]], [0], cfg)[0]
            for img in (r.crop, r.local):
                pv, grid = patchify(img, 1, cfg)
                packed.append(pv)
                grids.append(grid)
            labels, geometry = region_truth(scene, obj, int(f))
            regions.append(RegionInput(obj, int(f), r.mask_grid, r.box, r.orig_hw, labels,
                                       geometry))
    region_of = region_index(scene.num_objects, frames)
    encoded = [encode_question(tokenizer, q, scene, region_of, tokens_per_region)
               for q in questions]
    return SceneSample(scene.seed, tuple(int(f) for f in frames), np.concatenate(packed),
                       grids, regions, encoded)


@dataclass
class CropSample:
    """One object for the "crops" phase: its SAOT crop cut to the mask's cells plus one cell of
    margin (a fifth of the patches of the full crop, the same pixel scale), with the targets of
    `train.CropHeads`."""

    pixel_values: np.ndarray  # float32 [P, 3*14*14]
    grid: tuple[int, int]
    inside: np.ndarray  # bool [P]: cells under the mask grid
    labels: tuple[int, int, int]  # indices into SHAPES, COLOR_NAMES, SIZES
    cell_targets: np.ndarray  # float32 [P, SUB_CELLS**2 + 2]: sub-cell coverage, offset to centre


def crop_sample(scene: Scene, frame: int, obj: int, cfg: PreprocessConfig,
                margin: int = 1) -> CropSample | None:
    """The crop of `obj` in `frame` cut to the mask's cells plus `margin` cells (the full SAOT
    crop has 4-6 cells of padding; a random margin keeps the features robust to it). None when
    the processor resized the crop (pixel and mask grids then disagree) or nothing is left."""
    r = prepare_regions([scene.frames[frame]], [scene.masks[frame, obj]], [0], cfg)[0]
    ps = cfg.patch_size
    gh, gw = r.mask_grid.shape
    if r.crop.shape[:2] != (gh * ps, gw * ps) or not (r.mask_grid > 0).any():
        return None
    top, left, bottom, right = r.box
    mask = scene.masks[frame, obj][top:bottom + 1, left:right + 1].astype(np.float32)
    mask = cv2.resize(mask, (gw * ps, gh * ps), interpolation=cv2.INTER_LINEAR)
    rows, cols = np.nonzero(r.mask_grid > 0)
    r0, c0 = max(int(rows.min()) - margin, 0), max(int(cols.min()) - margin, 0)
    r1, c1 = min(int(rows.max()) + 1 + margin, gh), min(int(cols.max()) + 1 + margin, gw)
    th, tw = r1 - r0, c1 - c0
    mask = mask[r0 * ps:r1 * ps, c0 * ps:c1 * ps]
    sub = cv2.resize(mask, (tw * SUB_CELLS, th * SUB_CELLS), interpolation=cv2.INTER_AREA)
    sub = sub.reshape(th, SUB_CELLS, tw, SUB_CELLS).transpose(0, 2, 1, 3).reshape(th * tw, -1)
    cy, cx = np.argwhere(mask > 0.5).mean(axis=0) / ps if (mask > 0.5).any() else (th / 2, tw / 2)
    rr, cc = np.mgrid[0:th, 0:tw]
    offset = np.stack([cc + 0.5 - cx, rr + 0.5 - cy], axis=-1).reshape(-1, 2) / max(th, tw)
    pixel_values, grid = patchify(r.crop[r0 * ps:r1 * ps, c0 * ps:c1 * ps], 1, cfg)
    if grid != (th, tw):
        return None
    labels, _ = region_truth(scene, obj, frame)
    return CropSample(pixel_values, grid, (r.mask_grid[r0:r1, c0:c1] > 0).reshape(-1), labels,
                      np.concatenate([sub, offset], axis=1).astype(np.float32))


def sample_frames(rng: np.random.Generator, num_frames: int, min_frames: int = 2) -> list[int]:
    """A sorted random subset of the clip's frames, of random size min_frames..num_frames."""
    count = int(rng.integers(min_frames, num_frames + 1))
    return sorted(int(f) for f in rng.choice(num_frames, count, replace=False))


def make_batch(seed: int, step: int, scenes_per_step: int, tokenizer: TextTokenizer,
               world: WorldConfig = WORLD, cfg: PreprocessConfig = PREPROCESS,
               phase: str = "answers", left_only: bool = False,
               tokens_per_region: int = TOKENS_PER_REGION) -> list[SceneSample]:
    """The scenes of training step `step` of `phase`: a pure function of (seed, phase, step).

    phase "answers": random frame subsets with the question mix above. Phase "vision": one
    random frame per scene and no questions (the auxiliary heads are the only loss). Phase
    "crops": `CropSample`s of every object in CROP_FRAMES random frames per scene.
    `left_only`: the relation curriculum of the module docstring.
    """
    rng = np.random.default_rng([seed, PHASES.index(phase), step])
    out: list = []
    for scene_seed in rng.integers(0, HELD_OUT_SEED, scenes_per_step):
        scene = generate_scene(int(scene_seed), world)
        if phase == "crops":
            for f in rng.choice(scene.num_frames, CROP_FRAMES, replace=False):
                for obj in range(scene.num_objects):
                    margin = int(rng.integers(1, CROP_MAX_MARGIN + 1))
                    sample = crop_sample(scene, int(f), obj, cfg, margin)
                    if sample is not None:
                        out.append(sample)
            continue
        if phase == "vision":
            frames, questions = [int(rng.integers(scene.num_frames))], []
        else:
            if rng.random() < P_ENDPOINT_CLIP:
                frames = [0, scene.num_frames - 1]
            else:
                frames = sample_frames(rng, scene.num_frames)
            questions = training_questions(scene, frames, rng, left_only)
        out.append(preprocess_scene(scene, frames, questions, tokenizer, cfg,
                                    tokens_per_region))
    return out


# ----------------------------------------------------------------------------- worker process

_WORKER_TOKENIZER: TextTokenizer | None = None


def worker_init(tokenizer_json: str) -> None:
    """Initialiser of a batch-building process: one cv2 thread, its own tokenizer copy."""
    import cv2

    global _WORKER_TOKENIZER  # this process's tokenizer, set once before any batch
    cv2.setNumThreads(1)
    _WORKER_TOKENIZER = TextTokenizer(Tokenizer.from_str(tokenizer_json))


def worker_batch(seed: int, step: int, scenes_per_step: int, phase: str,
                 left_only: bool = False,
                 tokens_per_region: int = TOKENS_PER_REGION) -> list[SceneSample]:
    """`make_batch` in a worker process set up by `worker_init`."""
    if _WORKER_TOKENIZER is None:
        raise RuntimeError("worker_batch needs worker_init to run first in this process")
    return make_batch(seed, step, scenes_per_step, _WORKER_TOKENIZER, phase=phase,
                      left_only=left_only, tokens_per_region=tokens_per_region)
