"""The synthetic shapes world: determinism, masks vs pixels, ground truth vs measurement, texts."""

from __future__ import annotations

import itertools
import random

import cv2
import numpy as np
import pytest

from pixelrefer_ros.synthetic import (
    ANSWERS,
    COLORS,
    MOTIONS,
    PROMPTS,
    RELATION_PROMPTS,
    SHAPES,
    SIZES,
    TASKS,
    VOCABULARY,
    ObjectSpec,
    SceneStream,
    Sprite,
    WorldConfig,
    answer_for,
    describe,
    generate_scene,
    make_examples,
    render_frame,
    words,
)

CFG = WorldConfig()
TOL = CFG.noise_amplitude  # a drawn pixel is its object's colour +- the noise


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed) for seed in range(80)]


def mask_centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_same_seed_same_scene_and_no_global_rng():
    np.random.seed(1)
    random.seed(1)
    state = np.random.get_state()
    a = generate_scene(7)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG untouched
    np.random.seed(99)
    random.seed(99)
    b = generate_scene(7)
    for name in ("frames", "masks", "timestamps", "background", "relations"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for oa, ob in zip(a.objects, b.objects, strict=True):
        assert (oa.shape, oa.color, oa.size, oa.motion, oa.rgb, oa.z) == \
            (ob.shape, ob.color, ob.size, ob.motion, ob.rgb, ob.z)
        assert np.array_equal(oa.centers, ob.centers)
        assert np.array_equal(oa.bboxes, ob.bboxes)
    c = generate_scene(8)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.background, c.background)


@pytest.mark.parametrize("cfg", [
    WorldConfig(),
    WorldConfig(width=320, height=224, num_frames=16, fps=10.0),
    WorldConfig(width=224, height=288, num_frames=1),
])
def test_layout_types_and_timestamps(cfg):
    for seed in range(5):
        s = generate_scene(seed, cfg)
        steps, n = cfg.num_frames, s.num_objects
        assert 1 <= n <= 4
        assert s.frames.shape == (steps, cfg.height, cfg.width, 3)
        assert s.frames.dtype == np.uint8
        assert s.masks.shape == (steps, n, cfg.height, cfg.width)
        assert s.masks.dtype == np.uint8
        assert set(np.unique(s.masks)) == {0, 1}  # 0/1, not 0/255
        assert (s.masks.reshape(steps, n, -1).max(-1) == 1).all()  # every object visible
        assert np.allclose(s.timestamps, np.arange(steps) / cfg.fps)
        assert s.relations.shape == (steps, n, n)
        if steps == 1:
            assert all(o.motion == "still" for o in s.objects)


def test_masks_are_exactly_the_drawn_pixels(scenes):
    palette = np.array(list(COLORS.values()), np.float64)
    far = CFG.color_jitter + CFG.noise_amplitude
    for s in scenes:
        frames = s.frames.astype(np.int16)
        for t in range(s.num_frames):
            for o in s.objects:
                m = s.masks[t, o.id].astype(bool)
                diff = np.abs(frames[t][m] - np.array(o.rgb)).max()
                assert diff <= TOL, (s.seed, t, o.id, diff)
                assert abs(np.array(o.rgb) - COLORS[o.color]).max() <= CFG.color_jitter
                assert o.visible_area[t] == m.sum()
                x0, y0, x1, y1 = o.bboxes[t]
                ys, xs = np.nonzero(m)
                assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                assert np.allclose(o.centroids[t], mask_centroid(m))
            # no pixel outside the masks looks like any palette colour: nothing drawn is missed
            outside = s.masks[t].max(0) == 0
            for colour in palette:
                near = cv2.inRange(s.frames[t], colour - far, colour + far) > 0
                assert not (near & outside).any(), (s.seed, t, colour)


def test_masks_disjoint_and_occlusion_hides_lower_objects(scenes):
    occluded = truncated = 0
    for s in scenes:
        assert s.masks.sum(axis=1).max() <= 1  # no pixel belongs to two objects
        for t in range(s.num_frames):
            for o in s.objects:
                frac = o.visible_area[t] / o.full_area[t]
                assert frac >= CFG.min_visible_fraction
                _, alone = render_frame(s.background, [o.sprite(t)])
                alone = alone[0].astype(bool)
                visible = s.masks[t, o.id].astype(bool)
                assert alone.sum() == o.in_frame_area[t]
                assert not (visible & ~alone).any()
                hidden = alone & ~visible
                above = np.zeros_like(visible)
                for other in s.objects:
                    if other.z > o.z:
                        above |= s.masks[t, other.id].astype(bool)
                assert not (hidden & ~above).any()  # only objects on top hide pixels
                if hidden.any():
                    occluded += 1
                    assert o.visible_area[t] < o.in_frame_area[t] <= o.full_area[t]
                    assert s.state(o.id, t).occluded
                if o.in_frame_area[t] < o.full_area[t]:
                    truncated += 1
                    assert s.state(o.id, t).truncated
    assert occluded > 20 and truncated > 20  # both happen, and not rarely


def test_motion_ground_truth_matches_measured_displacement(scenes):
    checked = 0
    for s in scenes:
        for o in s.objects:
            v = np.array(o.velocity)
            if o.motion != "still":
                assert CFG.speed[0] <= o.speed <= CFG.speed[1]
                assert np.allclose(o.centers[-1] - o.centers[0], v * (s.num_frames - 1))
            clean = o.visible_area == o.full_area  # neither occluded nor cut off
            for t in range(s.num_frames - 1):
                if clean[t] and clean[t + 1]:
                    step = mask_centroid(s.masks[t + 1, o.id]) - mask_centroid(s.masks[t, o.id])
                    assert np.abs(step - v).max() < 1.0, (s.seed, o.id, t, step, v)
                    moving = np.abs(step).max() > 2.0
                    assert answer_for("moving", s, (o.id,)) == ("yes" if moving else "no")
                    if moving:
                        axis = int(np.argmax(np.abs(step)))
                        seen = (("left", "right"), ("up", "down"))[axis][int(step[axis] > 0)]
                        assert answer_for("direction", s, (o.id,)) == seen
                    else:
                        assert answer_for("direction", s, (o.id,)) == "not moving"
                    checked += 1
    assert checked > 500


def test_relation_answers_agree_with_mask_centroids(scenes):
    asked = 0
    spaced_at_start = multi = 0
    for s in scenes:
        if s.num_objects < 2:
            continue
        multi += 1
        x = np.array([[mask_centroid(s.masks[t, i])[0] for i in range(s.num_objects)]
                      for t in range(s.num_frames)])
        gaps = [abs(x[0, i] - x[0, j]) for i, j in itertools.combinations(range(s.num_objects), 2)]
        spaced_at_start += min(gaps) >= CFG.min_relation_dx
        for t in range(s.num_frames):
            for i, j in itertools.permutations(range(s.num_objects), 2):
                dx = x[t, j] - x[t, i]
                if abs(dx) < CFG.min_relation_dx:
                    assert s.left_of(i, j, t) is None
                    with pytest.raises(ValueError):
                        answer_for("relation", s, (i, j), t)
                    continue
                assert s.left_of(i, j, t) == (dx > 0)
                assert answer_for("relation", s, (i, j), t, "left") == ("yes" if dx > 0 else "no")
                assert answer_for("relation", s, (i, j), t, "right") == ("no" if dx > 0 else "yes")
                asked += 1
        for ex in make_examples(s, np.random.default_rng(s.seed), ("relation",), per_task=4):
            (t,), (i, j) = ex.frames, ex.object_ids
            left = x[t, j] - x[t, i] >= CFG.min_relation_dx
            right = x[t, i] - x[t, j] >= CFG.min_relation_dx
            assert left or right
            expected = left if ex.prompt == RELATION_PROMPTS["left"] else right
            assert ex.answer == ("yes" if expected else "no")
    assert asked > 1000
    assert spaced_at_start >= 0.6 * multi  # initial placement keeps objects apart in x


def test_vocabulary_is_exactly_the_words_of_all_texts(scenes):
    assert len(VOCABULARY) == len(set(VOCABULARY))
    vocab = set(VOCABULARY)
    produced: set[str] = set()
    rng = np.random.default_rng(0)
    single = [generate_scene(seed, WorldConfig(num_frames=1)) for seed in range(10)]
    for s in [*scenes, *single]:
        for ex in make_examples(s, rng, per_task=5):
            for text in (ex.prompt, ex.answer):
                assert set(words(text)) <= vocab, text
                produced |= set(words(text))
    assert produced == vocab  # and the examples use all of it
    templates = [*PROMPTS.values(), *RELATION_PROMPTS.values()]
    answers = [a for choices in ANSWERS.values() for a in choices]
    descriptions = [describe(ObjectSpec(sh, co, si, mo), with_motion=wm)
                    for sh, co, si, mo, wm in itertools.product(SHAPES, COLORS, SIZES, MOTIONS,
                                                                (True, False))]
    every = {w for text in templates + answers + descriptions for w in words(text)}
    assert every == vocab
    assert words("What color is <region>?") == ["what", "color", "is", "<region>", "?"]
    assert describe(ObjectSpec("triangle", "red", "small", "left")) == \
        "a small red triangle moving left"
    assert describe(ObjectSpec("circle", "blue", "large", "still")) == \
        "a large blue circle staying still"


def test_every_shape_color_size_combination_can_be_generated():
    small_max, large_min = 0, 10**9
    for k, (shape, color, size) in enumerate(itertools.product(SHAPES, COLORS, SIZES)):
        s = generate_scene(1000 + k, objects=[ObjectSpec(shape=shape, color=color, size=size)])
        (o,) = s.objects
        assert (o.shape, o.color, o.size) == (shape, color, size)
        pixels = s.frames[0][s.masks[0, 0].astype(bool)].astype(int)
        assert np.abs(pixels - COLORS[color]).max() <= CFG.color_jitter + TOL
        area = int(o.full_area.min() if size == "large" else o.full_area.max())
        if size == "small":
            small_max = max(small_max, area)
        else:
            large_min = min(large_min, area)
    assert small_max * 1.5 < large_min  # size is unambiguous from the area alone
    seen = set()
    for seed in range(600):
        seen |= {(o.shape, o.color, o.size) for o in generate_scene(seed).objects}
        if len(seen) == len(SHAPES) * len(COLORS) * len(SIZES):
            break
    assert len(seen) == len(SHAPES) * len(COLORS) * len(SIZES)  # the sampler reaches them all


def test_requested_objects_and_bad_requests():
    s = generate_scene(3, objects=[{"motion": "left"}, ObjectSpec(color="red", shape="star")])
    assert s.num_objects == 2
    assert s.objects[0].motion == "left" and s.objects[0].velocity[0] < 0
    assert (s.objects[1].color, s.objects[1].shape) == ("red", "star")
    with pytest.raises(ValueError):
        generate_scene(0, objects=[ObjectSpec(shape="hexagon")])
    with pytest.raises(ValueError):
        generate_scene(0, WorldConfig(num_frames=1), objects=[ObjectSpec(motion="up")])
    for bad in ({"width": 100}, {"height": 400}, {"num_frames": 17}, {"num_frames": 0},
                {"max_objects": 5}, {"colors": ("pink",)}):
        with pytest.raises(ValueError):
            WorldConfig(**bad)


def test_make_examples(scenes):
    for s in scenes[:30]:
        a = make_examples(s, np.random.default_rng(5), per_task=2)
        b = make_examples(s, np.random.default_rng(5), per_task=2)
        assert a == b
        tasks = {ex.task for ex in a}
        assert tasks >= set(TASKS) - {"relation"}
        if s.num_objects >= 2 and (s.relations >= 0).any():
            assert "relation" in tasks
        for ex in a:
            assert ex.prompt.count("<region>") == len(ex.object_ids)
            if ex.task == "describe":
                assert ex.answer == describe(s.objects[ex.object_ids[0]])
            else:
                assert ex.answer in ANSWERS[ex.task]
            if ex.task == "relation":
                assert len(ex.frames) == 1
                assert s.relations[ex.frames[0], ex.object_ids[0], ex.object_ids[1]] >= 0
            else:
                assert ex.frames == tuple(range(s.num_frames))
    still = generate_scene(4, WorldConfig(num_frames=1))
    examples = make_examples(still, np.random.default_rng(0))
    assert not {"moving", "direction"} & {ex.task for ex in examples}
    assert all("moving" not in ex.answer for ex in examples if ex.task == "describe")
    with pytest.raises(ValueError):
        make_examples(still, np.random.default_rng(0), tasks=("count",))


def test_render_frame_draws_in_order():
    bg = np.full((256, 256, 3), 100, np.uint8)
    sprites = [Sprite("square", (100.0, 100.0), 30.0, 0.0, (200, 0, 0)),
               Sprite("circle", (130.0, 100.0), 20.0, 0.0, (0, 0, 200))]
    frame, masks = render_frame(bg, sprites)
    assert masks.shape == (2, 256, 256) and masks.max() == 1
    assert masks.sum(0).max() == 1
    assert tuple(frame[100, 120]) == (0, 0, 200)  # the circle is on top
    assert masks[0, 100, 120] == 0 and masks[1, 100, 120] == 1
    assert tuple(frame[100, 80]) == (200, 0, 0)
    assert np.array_equal(frame[masks.max(0) == 0], bg[masks.max(0) == 0])


def test_scene_stream_resizes_and_continues():
    cfg = WorldConfig(num_frames=4)
    stream = SceneStream(seed=3, cfg=cfg, size=(640, 480))
    frames = [next(stream) for _ in range(9)]
    assert [f.scene_seed for f in frames] == [3] * 4 + [4] * 4 + [5]
    assert [f.frame_index for f in frames] == [0, 1, 2, 3] * 2 + [0]
    assert np.allclose([f.stamp for f in frames], np.arange(9) / cfg.fps)
    ref = generate_scene(3, WorldConfig(width=320, height=240, num_frames=4))
    for f in frames[:4]:
        assert f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8
        assert f.masks.shape == (ref.num_objects, 480, 640)
        assert set(np.unique(f.masks)) <= {0, 1}
        assert f.scale == (2.0, 2.0)
        expected = cv2.resize(ref.frames[f.frame_index], (640, 480))
        assert np.array_equal(f.image, expected)
    native = SceneStream(seed=3, cfg=cfg)
    first = next(native)
    assert np.array_equal(first.image, generate_scene(3, cfg).frames[0])
