"""Accuracy per task of a checkpoint on held-out scenes, through the ordinary inference path.

    python -m pixelrefer_ros.training.evaluate models/shapes --scenes 300

The model is loaded with `load_checkpoint` and queried exactly as the node does: per frame
`RegionPipeline.global_features`, per (object, frame) `object_tokens`, then greedy `answer`.
Answers count as right when the stripped text equals the ground truth.

Keys of the accuracy table are "<mode>/<task>":
- image: one frame, image prompt (color, shape, size, describe without motion, relation);
- video: all frames of the clip, `Time t:` prompt (moving, direction, describe with motion, and
  color/shape/size asked in video mode);
- single: the motion questions asked about one frame in image mode. A frame carries no motion,
  so these should stay near `chance` (the share of the most frequent answer).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixelrefer_ros.model.loader import LoadedModel, load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.synthetic import Scene, generate_scene
from pixelrefer_ros.training.data import (
    HELD_OUT_SEED,
    WORLD,
    Question,
    object_question,
    relation_questions,
    relative_times,
)

MAX_NEW_TOKENS = 12  # the longest answer ("a large purple triangle staying still") is 6 words
MAX_RELATIONS = 2  # per scene


@dataclass(frozen=True)
class Outcome:
    seed: int
    key: str  # "<mode>/<task>"
    expected: str
    got: str

    @property
    def correct(self) -> bool:
        return self.got.strip() == self.expected.strip()


def evaluation_questions(scene: Scene, rng: np.random.Generator) -> list[tuple[str, Question]]:
    """(mode key, question) pairs about every object: image mode on one random frame, video
    mode on the whole clip, and the motion questions on that single frame."""
    frame = int(rng.integers(scene.num_frames))
    clip = tuple(range(scene.num_frames))
    out: list[tuple[str, Question]] = []
    for obj in range(scene.num_objects):
        for task in ("color", "shape", "size", "describe"):
            out.append(("image", object_question(scene, task, obj, (frame,), "image")))
        for task in ("moving", "direction", "describe", "color", "shape", "size"):
            out.append(("video", object_question(scene, task, obj, clip, "video")))
        for task in ("moving", "direction"):
            out.append(("single", object_question(scene, task, obj, (frame,), "image")))
    out.extend(("image", q) for q in relation_questions(scene, frame, rng, MAX_RELATIONS))
    return out


def evaluate_scene(pipeline: RegionPipeline, scene: Scene, rng: np.random.Generator,
                   max_new_tokens: int = MAX_NEW_TOKENS) -> list[Outcome]:
    globals_ = [pipeline.global_features(frame) for frame in scene.frames]  # [Pg, C] each
    tokens = {(obj, f): pipeline.object_tokens(scene.frames[f], scene.masks[f, obj], globals_[f])
              for obj in range(scene.num_objects) for f in range(scene.num_frames)}  # [K, H]
    outcomes = []
    for mode, q in evaluation_questions(scene, rng):
        blocks = [torch.cat([tokens[(obj, f)] for f in q.frames]) for obj in q.objects]
        stamps = None
        if q.mode == "video":
            stamps = [relative_times(scene, q.frames)] * len(q.objects)
        answer = pipeline.answer(q.prompt, blocks, stamps, max_new_tokens)
        outcomes.append(Outcome(scene.seed, f"{mode}/{q.task}", q.answer, answer.text))
    return outcomes


def summarize(outcomes: Sequence[Outcome]) -> dict:
    by_key: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        by_key[o.key].append(o)
    keys = sorted(by_key)
    chance = {}
    for key in keys:
        if key.startswith("single/"):
            answers = collections.Counter(o.expected for o in by_key[key])
            chance[key] = round(answers.most_common(1)[0][1] / len(by_key[key]), 4)
    return {
        "accuracy": {k: round(sum(o.correct for o in by_key[k]) / len(by_key[k]), 4)
                     for k in keys},
        "count": {k: len(by_key[k]) for k in keys},
        "chance": chance,
        "mistakes": [vars(o) | {"correct": False} for o in outcomes
                     if not o.correct and not o.key.startswith("single/")][:20],
    }


def evaluate(loaded: LoadedModel, seeds: Sequence[int], eval_seed: int = 0) -> dict:
    """Per-task accuracy over the scenes `seeds` (use seeds >= HELD_OUT_SEED)."""
    if min(seeds) < HELD_OUT_SEED:
        raise ValueError(f"evaluation seeds must be >= {HELD_OUT_SEED} (training uses the rest)")
    pipeline = RegionPipeline(loaded)
    start = time.perf_counter()
    outcomes: list[Outcome] = []
    for seed in seeds:
        rng = np.random.default_rng([eval_seed, seed])
        outcomes.extend(evaluate_scene(pipeline, generate_scene(seed, WORLD), rng))
    report = summarize(outcomes)
    report.update(num_scenes=len(seeds), first_seed=min(seeds), last_seed=max(seeds),
                  wall_time_s=round(time.perf_counter() - start, 1))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint directory (official HF layout)")
    p.add_argument("--scenes", type=int, default=300, help="number of held-out scenes")
    p.add_argument("--first-seed", type=int, default=HELD_OUT_SEED)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    report = evaluate(loaded, range(args.first_seed, args.first_seed + args.scenes))
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: report[k] for k in ("accuracy", "chance", "num_scenes",
                                             "wall_time_s")}, indent=2))


if __name__ == "__main__":
    main()
