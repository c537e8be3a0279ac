"""The committed built-in model (models/shapes) loads through the ordinary loader and meets the
issue's accuracy targets on held-out scenes, asked through the node's own inference path
(`RegionPipeline`: per-frame global features, per-(object, frame) tokens, greedy answers).

The held-out set is fixed (seeds HELD_OUT_SEED ..), so the figures are deterministic for a given
checkpoint; README "The built-in shapes model" lists them with the 300-scene evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.training.data import HELD_OUT_SEED
from pixelrefer_ros.training.evaluate import evaluate

MODEL = Path(__file__).resolve().parents[1] / "models" / "shapes"
SCENES = 100  # ~270 objects, ~170 relations (the committed model: shape 0.970 here, 0.968 on 300)


@pytest.fixture(scope="module")
def report() -> dict:
    report = evaluate(load_checkpoint(MODEL), range(HELD_OUT_SEED, HELD_OUT_SEED + SCENES))
    print(json.dumps({k: report[k] for k in ("accuracy", "count", "chance")}))
    return report


def test_checkpoint_is_small_and_in_the_official_layout() -> None:
    size = sum(f.stat().st_size for f in MODEL.iterdir())
    assert size < 25 * 2**20
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (MODEL / name).is_file(), name
    loaded = load_checkpoint(MODEL, weights=False)
    assert loaded.config.model_id == "shapes"
    assert json.loads((MODEL / "config.json").read_text())["model_type"] == "pixelreferlite_qwen2"


@pytest.mark.parametrize("task", ["color", "shape", "size"])
def test_attributes_from_a_single_frame(report: dict, task: str) -> None:
    assert report["accuracy"][f"image/{task}"] >= 0.95, report["accuracy"]


def test_motion_needs_the_video_path(report: dict) -> None:
    acc, chance = report["accuracy"], report["chance"]
    assert acc["video/moving"] >= 0.90 and acc["video/direction"] >= 0.90, acc
    # one frame carries no motion: answers there are no better than always saying the most
    # frequent answer (plus sampling slack), so the video figures come from the temporal path
    for task in ("moving", "direction"):
        assert acc[f"single/{task}"] <= chance[f"single/{task}"] + 0.15, (task, acc, chance)


def test_relation_between_two_objects(report: dict) -> None:
    assert report["count"]["image/relation"] >= 20
    assert report["accuracy"]["image/relation"] >= 0.90, report["accuracy"]


def test_describe_names_the_object_from_a_single_frame(report: dict) -> None:
    """Not an issue target: a floor that catches a broken checkpoint or inference path (the
    committed model gives 0.94 on 100 scenes; a model that answers at random gets ~0)."""
    assert report["accuracy"]["image/describe"] >= 0.6, report["accuracy"]
