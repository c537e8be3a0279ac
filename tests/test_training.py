"""A short run of the shapes-model training learns in every phase and writes a loadable
checkpoint; the training forward matches the model's own forward."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.tokenizer import TextTokenizer
from pixelrefer_ros.synthetic import generate_scene
from pixelrefer_ros.training.data import (
    PREPROCESS,
    SUB_CELLS,
    build_tokenizer,
    crop_sample,
    focus_questions,
    make_batch,
    preprocess_scene,
    region_index,
    relation_questions,
    reversed_in_time,
    spanning_frames,
    without_pixels,
)
from pixelrefer_ros.training.train import (
    AUX_CLASSES,
    AUX_GEOMETRY,
    AuxHeads,
    CropHeads,
    ModelShape,
    PhaseConfig,
    TrainConfig,
    answer_loss,
    aux_loss,
    build_model,
    compiled_llm_forward,
    crop_loss,
    focus_batch,
    focus_p_middle,
    pool_rows,
    region_tokens,
    token_bank,
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
                      answers=PhaseConfig(16, 1, 3e-3, 2), focus=PhaseConfig(20, 4, 3e-3, 2),
                      focus_bank=6, log_every=5, compile_focus=False, shape=TINY)
    _, report = train(cfg, out_dir=tmp_path / "ckpt", log=lambda *_: None)
    crops = report["phases"]["crops"]["history"]
    answers = report["phases"]["answers"]["history"]
    focus = report["phases"]["focus"]["history"]
    assert len(crops) == 6 and len(answers) == 4 and len(focus) == 4
    for history, key in ((crops, "loss"), (answers, "answer_loss"), (focus, "answer_loss")):
        first, last = _first_last(history, key)
        assert last < 0.8 * first, history
    assert report["stopped_by"] == "steps"
    loaded = load_checkpoint(tmp_path / "ckpt")  # an ordinary checkpoint, heads left out
    assert loaded.config.llm.hidden_size == 64
    assert not any(k.startswith(("heads", "crop")) for k in loaded.model.state_dict())
    # config.json names the tokenizer's own ids (the loader would recompute them anyway), so a
    # from-scratch run and an --init-from run write the same file
    written = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert written["eos_token_id"] == loaded.tokenizer.eos_id == loaded.config.eos_token_id
    assert written["region_token_index"] == loaded.config.region_token_id

    # --init-from: only the focus phase, on top of that checkpoint; the vision side is kept
    # (and --focus-stop-step: the schedule of 20 steps, cut after 12)
    cut = replace(cfg, focus_stop_step=12)
    _, again = train(cut, out_dir=tmp_path / "focused", log=lambda *_: None,
                     init_from=tmp_path / "ckpt")
    assert list(again["phases"]) == ["focus"]
    assert again["phases"]["focus"]["steps_done"] == 12
    assert again["phases"]["focus"]["stopped_by"] == "focus_stop_step"
    assert again["phases"]["focus"]["history"][-1]["step"] == 12
    refocused = load_checkpoint(tmp_path / "focused").model.state_dict()
    before = loaded.model.state_dict()
    assert all(torch.equal(before[k], refocused[k]) for k in before if not k.startswith("llm."))
    assert not all(torch.equal(before[k], refocused[k]) for k in before if k.startswith("llm."))


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


def test_crop_head_pools_reach_a_single_cell_only_through_the_max() -> None:
    """"meanmax" sees one cell's change at full size, "mean" at 1/N of it: why the crops
    phase pools both (README: shapes differ in a few cells)."""
    cells = torch.zeros(200, 4)
    changed = cells.clone()
    changed[17, 2] = 1.0
    for pool, expected in (("mean", 1 / 200), ("meanmax", 1.0)):
        heads = CropHeads(4, pool)
        diff = (heads.pool_cells(changed) - heads.pool_cells(cells)).abs().max()
        assert float(diff) == pytest.approx(expected), pool
    assert CropHeads(4, "meanmax").pool_cells(cells).shape == (8,)
    with pytest.raises(ValueError, match="pool 'max'; choose one of"):
        CropHeads(4, "max")


def test_crop_loss_trains_the_vit_with_either_pool() -> None:
    tokenizer = TextTokenizer(build_tokenizer())
    scene = generate_scene(3)
    samples = [s for s in (crop_sample(scene, 0, obj, PREPROCESS)
                           for obj in range(scene.num_objects)) if s is not None]
    for pool in ("mean", "meanmax"):
        model = build_model(TINY, tokenizer, seed=0)
        loss, stats = crop_loss(model.vision, CropHeads(TINY.vision_hidden, pool), samples)
        loss.backward()
        assert torch.isfinite(loss) and stats["regions"] == len(samples)
        assert model.vision.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_aux_heads_read_one_token_at_full_size_only_through_the_max() -> None:
    """The vision phase's heads pool a region's K object tokens as the crops head pools
    cells: with "meanmax" one token's change reaches the heads undiluted (README)."""
    tokens = torch.zeros(3, 8, 4)  # [R, K, H]
    changed = tokens.clone()
    changed[:, 5, 1] = 1.0
    for pool, expected in (("mean", 1 / 8), ("meanmax", 1.0)):
        diff = (pool_rows(changed, pool, dim=1) - pool_rows(tokens, pool, dim=1)).abs().max()
        assert float(diff) == pytest.approx(expected), pool
        assert AuxHeads(4, pool)(changed).shape == (3, sum(AUX_CLASSES) + AUX_GEOMETRY)
    assert pool_rows(tokens, "meanmax", dim=1).shape == (3, 8)
    with pytest.raises(ValueError, match="pool 'max'; choose one of"):
        AuxHeads(4, "max")


def test_aux_loss_trains_the_object_tokenizer_with_either_pool() -> None:
    tokenizer = TextTokenizer(build_tokenizer())
    samples = make_batch(0, 0, 2, tokenizer, phase="vision",
                         tokens_per_region=TINY.tokens_per_object)
    for pool in ("mean", "meanmax"):
        model = build_model(TINY, tokenizer, seed=0)
        tokens = region_tokens(model, samples, train_vision=False)
        loss, stats = aux_loss(AuxHeads(TINY.llm_hidden, pool), tokens, samples)
        loss.backward()
        assert torch.isfinite(loss) and 0.0 <= stats["acc_shape"] <= 1.0
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in model.objects.feat_linear.parameters())


def test_relation_curriculum_asks_only_left_of_early_on() -> None:
    rng = np.random.default_rng(0)
    both, left = set(), set()
    for seed in range(40):
        scene = generate_scene(seed)
        both |= {q.prompt for q in relation_questions(scene, 0, rng, 4)}
        left |= {q.prompt for q in relation_questions(scene, 0, rng, 4, p_right=0.0)}
    assert len(both) == 2  # "left of" and "right of"
    assert len(left) == 1 and "left" in left.pop()


def test_focus_questions_span_the_clip_and_ask_where_things_are() -> None:
    rng = np.random.default_rng(0)
    for seed in range(20):
        scene = generate_scene(seed)
        qs = focus_questions(scene, rng)
        video = [q for q in qs if q.mode == "video"]
        for q in video:  # the whole displacement is in every clip
            assert q.frames[0] == 0 and q.frames[-1] == scene.num_frames - 1
        for task in ("direction", "moving", "describe"):
            assert sorted(q.objects[0] for q in video if q.task == task) == list(
                range(scene.num_objects))
        assert all(q.task != "moving" and q.task != "direction" for q in qs if q.mode == "image")
        left = focus_questions(scene, rng, p_right=0.0)
        assert all("left" in q.prompt for q in left if q.task == "relation")


def test_focus_clips_lengthen_along_the_phase() -> None:
    scene = generate_scene(3)
    last = scene.num_frames - 1
    short = focus_questions(scene, np.random.default_rng(7), p_middle=0.0)
    full = focus_questions(scene, np.random.default_rng(7), p_middle=1.0)
    assert {q.frames for q in short if q.mode == "video"} == {(0, last)}
    assert {q.frames for q in full if q.mode == "video"} == {tuple(range(last + 1))}
    # relations keep their own frames: short clips early on do not starve the relation break
    assert ([q.frames for q in short if q.task == "relation"]
            == [q.frames for q in full if q.task == "relation"])
    assert len({q.frames for q in short if q.task == "relation"}) > 2
    # one draw per middle frame whatever p_middle: what follows the clip draws the same
    after = []
    for p_middle in (0.0, 0.5, 1.0):
        rng = np.random.default_rng(11)
        spanning_frames(rng, scene.num_frames, p_middle)
        after.append(rng.random())
    assert after[0] == after[1] == after[2]
    cfg = TrainConfig(focus=PhaseConfig(steps=101, scenes_per_step=1, lr=1e-3, warmup_steps=1),
                      focus_clip_middle=(0.0, 0.6))
    assert [focus_p_middle(s, cfg) for s in (0, 50, 100)] == pytest.approx([0.0, 0.3, 0.6])


def test_token_bank_holds_each_object_at_each_frame_in_region_order() -> None:
    tokenizer = TextTokenizer(build_tokenizer())
    model = build_model(TINY, tokenizer, seed=0).eval()
    cfg = TrainConfig(focus_bank=2, shape=TINY)
    bank = token_bank(model, cfg, tokenizer)
    assert len(bank) == 2
    scene, tokens = bank[0]
    assert scene.frames.size == 0 and scene.masks.size == 0  # pixels dropped ...
    assert scene.frames.base is None and scene.masks.base is None  # ... and not kept as views
    full = generate_scene(scene.seed)
    assert scene.num_frames == full.num_frames and scene.num_objects == full.num_objects
    assert tokens.shape[:2] == (full.num_objects * full.num_frames, TINY.tokens_per_object)
    # object 1 at frame 2 sits where `region_index` (the focus loop's map) says
    index = region_index(full.num_objects, range(full.num_frames))[(1, 2)]
    assert index == 1 * full.num_frames + 2
    sample = preprocess_scene(full, [2], [], tokenizer, PREPROCESS)
    with torch.no_grad():
        alone = region_tokens(model, [sample], False)[0]  # [O, K, H]: every object at frame 2
    torch.testing.assert_close(tokens[index], alone[1], atol=1e-5, rtol=1e-4)
    assert without_pixels(full).relations is full.relations


def test_reversed_clip_flips_the_motion_and_reads_the_tokens_backwards() -> None:
    scene = next(s for s in map(generate_scene, range(50))
                 if any(o.motion == "left" for o in s.objects))
    back = reversed_in_time(scene)
    last = scene.num_frames - 1
    for o, b in zip(scene.objects, back.objects, strict=True):
        assert b.motion == {"left": "right", "right": "left", "up": "down", "down": "up",
                            "still": "still"}[o.motion]
        np.testing.assert_array_equal(b.centroids[0], o.centroids[last])
    np.testing.assert_array_equal(back.frames[0], scene.frames[last])
    np.testing.assert_array_equal(back.relations[0], scene.relations[last])
    np.testing.assert_array_equal(back.timestamps, scene.timestamps)  # time still runs forward
    # the focus phase's cached tokens: reversed frame 0 of object 1 is the original last frame
    forward = region_index(scene.num_objects, range(scene.num_frames))
    backward = region_index(scene.num_objects, range(scene.num_frames), reverse=True)
    assert backward[(1, 0)] == forward[(1, last)] and backward[(0, last)] == forward[(0, 0)]
    obj = next(i for i, o in enumerate(scene.objects) if o.motion == "left")
    qs = focus_questions(back, np.random.default_rng(0))
    assert {q.answer for q in qs if q.task == "direction" and q.objects == (obj,)} == {"right"}


def test_compiled_focus_forward_gives_the_eager_loss_and_gradients() -> None:
    """The focus phase's torch.compile'd LLM (`compiled_llm_forward`) computes what the eager
    forward does, to float rounding, over chunks of different batch sizes and lengths."""
    tokenizer = TextTokenizer(build_tokenizer())
    model = build_model(TINY, tokenizer, seed=0).eval()
    cfg = TrainConfig(focus=PhaseConfig(steps=100, scenes_per_step=2, lr=1e-3, warmup_steps=1),
                      focus_bank=2, shape=TINY)
    bank = token_bank(model, cfg, tokenizer)
    questions, tokens = focus_batch(bank, 99, cfg, tokenizer, TINY.tokens_per_object)
    assert len({len(q.ids) for qs in questions for q in qs}) > 3  # several lengths per call

    def loss_and_grads(llm_forward) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = answer_loss(model, questions, tokens, tokenizer.region_id, 5, llm_forward).mean
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.llm.parameters()]

    eager_loss, eager_grads = loss_and_grads(None)
    compiled_loss, compiled_grads = loss_and_grads(compiled_llm_forward(model))
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    for eager, compiled in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
