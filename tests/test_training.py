"""A short run of the shapes-model training learns in every phase and writes a loadable
checkpoint; the training forward matches the model's own forward."""

from __future__ import annotations

import numpy as np
import torch

from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.tokenizer import TextTokenizer
from pixelrefer_ros.synthetic import generate_scene
from pixelrefer_ros.training.data import (
    PREPROCESS,
    SUB_CELLS,
    build_tokenizer,
    crop_sample,
    make_batch,
    relation_questions,
)
from pixelrefer_ros.training.train import (
    ModelShape,
    PhaseConfig,
    TrainConfig,
    build_model,
    train,
    vision_features,
)

TINY = ModelShape(vision_hidden=32, vision_intermediate=64, vision_layers=1, vision_heads=2,
                  llm_hidden=64, llm_intermediate=128, llm_layers=1, llm_heads=2,
                  llm_kv_heads=1, max_position_embeddings=2048)


def _first_last(history: list[dict], key: str) -> tuple[float, float]:
    return history[0][key], history[-1][key]


def test_short_run_loss_falls_in_every_phase_and_writes_a_checkpoint(tmp_path) -> None:
    cfg = TrainConfig(crops=PhaseConfig(30, 2, 3e-3, 3), vision=PhaseConfig(10, 1, 3e-3, 2),
                      answers=PhaseConfig(16, 1, 3e-3, 2), log_every=5, prefetch=False,
                      shape=TINY)
    _, report = train(cfg, out_dir=tmp_path / "ckpt", log=lambda *_: None)
    crops = report["phases"]["crops"]["history"]
    answers = report["phases"]["answers"]["history"]
    assert len(crops) == 6 and len(answers) == 4
    first, last = _first_last(crops, "loss")
    assert last < 0.8 * first, crops
    first, last = _first_last(answers, "answer_loss")
    assert last < 0.8 * first, answers
    assert report["stopped_by"] == "steps"
    loaded = load_checkpoint(tmp_path / "ckpt")  # an ordinary checkpoint, heads left out
    assert loaded.config.llm.hidden_size == 64
    assert not any(k.startswith(("heads", "crop")) for k in loaded.model.state_dict())


def test_training_vision_forward_matches_the_model() -> None:
    tokenizer = TextTokenizer(build_tokenizer())
    model = build_model(TINY, tokenizer, seed=0).eval()
    sample = make_batch(0, 0, 1, tokenizer, phase="vision")[0]
    pixel_values = torch.from_numpy(sample.pixel_values)
    with torch.no_grad():
        ours = vision_features(model.vision, pixel_values, sample.grids)
        theirs = model.vision(pixel_values, sample.grids)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_crop_sample_targets_describe_the_object() -> None:
    scene = generate_scene(3)
    sample = crop_sample(scene, 0, 0, PREPROCESS)
    assert sample is not None
    th, tw = sample.grid
    assert sample.pixel_values.shape[0] == th * tw == sample.inside.size
    coverage = sample.cell_targets[:, :SUB_CELLS**2].mean(axis=1)
    # cells under the mask grid are mostly object, the margin ring mostly not
    assert coverage[sample.inside].mean() > 0.5 > coverage[~sample.inside].mean()
    offsets = sample.cell_targets[:, SUB_CELLS**2:]
    weights = coverage[:, None]
    assert np.abs((offsets * weights).sum(0) / weights.sum()).max() < 0.1  # centred on object


def test_relation_curriculum_asks_only_left_of_early_on() -> None:
    rng = np.random.default_rng(0)
    both, left = set(), set()
    for seed in range(40):
        scene = generate_scene(seed)
        both |= {q.prompt for q in relation_questions(scene, 0, rng, 4)}
        left |= {q.prompt for q in relation_questions(scene, 0, rng, 4, left_only=True)}
    assert len(both) == 2  # "left of" and "right of"
    assert len(left) == 1 and "left" in left.pop()
