"""Property tests (hypothesis) of everything the node does with an untrusted message before the
model sees it: image and compressed-image decoding, region prompts -> masks, and
DescribeRegion requests -> worker jobs. Each case must end in a defined value or a
ConversionError / RequestError naming the problem, never in any other exception.

The examples in tests/test_conversions.py pin the messages of known bad inputs; these tests
search the space around them. Bounded and derandomized, so CI runs the same cases every time.
"""

from __future__ import annotations

import array
import collections
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, RegionOfInterest

from pixelrefer_ros.buffer import FrameBuffer
from pixelrefer_ros.model.config import PreprocessConfig
from pixelrefer_ros.ros.conversions import (
    ConversionError,
    compressed_to_rgb,
    image_to_rgb,
    region_to_mask,
)
from pixelrefer_ros.ros.inputs import CameraInput, LatestFrame
from pixelrefer_ros.ros.params import NodeParams
from pixelrefer_ros.ros.service import build_job
from pixelrefer_ros.runtime import (
    MAX_OBJECTS_PER_REQUEST,
    MAX_QUESTION_CHARS,
    DescribeJob,
    RequestError,
    ResultCode,
    check_job,
)
from pixelrefer_ros_interfaces.msg import RegionPrompt
from pixelrefer_ros_interfaces.srv import DescribeRegion
from tests.fuzz_strategies import (
    S,
    compressed_images,
    describe_requests,
    images,
    jpeg_or_png,
    region_prompts,
    well_formed,
    with_declared_size,
)

MAX_PIXELS = 64 * 64  # small, so that declared sizes above it are common
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def summary(name: str, counts: collections.Counter) -> str:
    outcomes = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return f"fuzz {name}: {sum(counts.values())} cases ({outcomes})"


def test_fuzz_image_to_rgb(robustness_report):
    counts: collections.Counter[str] = collections.Counter()

    @FUZZ
    @given(msg=images(max_side=48))
    def check(msg):
        try:
            rgb = image_to_rgb(msg, MAX_PIXELS)
        except ConversionError as exc:
            assert str(exc) and not well_formed(msg, MAX_PIXELS), (msg.encoding, str(exc))
            counts["refused"] += 1
            return
        assert well_formed(msg, MAX_PIXELS)
        assert rgb.dtype == np.uint8 and rgb.shape == (msg.height, msg.width, 3)
        assert rgb.flags.c_contiguous and rgb.flags.owndata
        counts["converted"] += 1

    check()
    robustness_report(summary("image_to_rgb", counts))
    assert counts["converted"] > 30 and counts["refused"] > 30  # both sides were explored


def test_fuzz_compressed_to_rgb(robustness_report):
    counts: collections.Counter[str] = collections.Counter()

    @FUZZ
    @given(msg=compressed_images())
    def check(msg):
        try:
            rgb = compressed_to_rgb(msg, MAX_PIXELS)
        except ConversionError as exc:
            assert str(exc)
            counts["refused"] += 1
            return
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
        counts["decoded"] += 1

    check()
    robustness_report(summary("compressed_to_rgb", counts))
    assert counts["decoded"] > 30 and counts["refused"] > 30


@pytest.mark.parametrize("side", [10_000, 20_000])  # below and above PIL's own bomb limit
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_forged_compressed_header_is_refused_before_decoding(fmt, side):
    """A few hundred bytes declaring side x side pixels: refused from the header, before cv2
    allocates and decodes it (20000x20000 jpeg: 1.2 GB and seconds of CPU before this check)."""
    data = with_declared_size(jpeg_or_png(np.zeros((8, 8, 3), np.uint8), fmt), fmt, side, side)
    msg = CompressedImage(format=fmt, data=array.array("B", data))
    start = time.perf_counter()
    with pytest.raises(ConversionError, match=r"header declares .*max_image_pixels"):
        compressed_to_rgb(msg)  # the node's default limit, 4096x4096
    assert len(data) < 1000 and time.perf_counter() - start < 0.5


def _box_oracle(region: RegionPrompt, h: int, w: int) -> np.ndarray | None:
    b = region.box
    if b.width == 0 or b.height == 0 or b.x_offset >= w or b.y_offset >= h:
        return None
    m = np.zeros((h, w), np.uint8)
    m[b.y_offset:b.y_offset + b.height, b.x_offset:b.x_offset + b.width] = 1
    return m


def _mask_oracle(region: RegionPrompt, h: int, w: int) -> np.ndarray | None:
    m = region.mask
    if m.encoding not in ("mono8", "8UC1") or (m.height, m.width) != (h, w) or m.step < w \
            or len(m.data) < m.step * h:
        return None
    pixels = np.frombuffer(bytes(m.data), np.uint8)[:m.step * h].reshape(h, m.step)[:, :w]
    out = (pixels != 0).astype(np.uint8)
    return out if out.any() else None


def test_fuzz_region_to_mask(robustness_report):
    counts: collections.Counter[str] = collections.Counter()
    oracles = {RegionPrompt.TYPE_BOX: _box_oracle, RegionPrompt.TYPE_MASK: _mask_oracle}

    @FUZZ
    @given(data=st.data(), hw=st.tuples(st.integers(1, 48), st.integers(1, 48)))
    def check(data, hw):
        region = data.draw(region_prompts(hw))
        h, w = hw
        oracle = oracles.get(region.type)
        expected = oracle(region, h, w) if oracle else None
        kind = {0: "mask", 1: "box", 2: "polygon", 3: "point"}.get(region.type, "unknown")
        try:
            mask = region_to_mask(region, hw, 5.0)
        except ConversionError as exc:
            assert str(exc) and expected is None, (kind, str(exc))
            counts[f"{kind}_refused"] += 1
            return
        assert mask.dtype == np.uint8 and mask.shape == hw and mask.any()
        assert set(np.unique(mask)) <= {0, 1}
        if oracle:
            np.testing.assert_array_equal(mask, expected)
        counts[f"{kind}_ok"] += 1

    check()
    robustness_report(summary("region_to_mask", counts))
    for kind in ("mask", "box", "polygon", "point"):
        assert counts[f"{kind}_ok"] and counts[f"{kind}_refused"], counts
    assert counts["unknown_refused"]


@pytest.fixture(scope="module")
def node_inputs():
    params = NodeParams.from_mapping({"cameras": ["cam", "aux"], "request_timeout_s": 5.0,
                                      "max_new_tokens": 16, "video_max_frames": 4})
    rgb = np.zeros((40, 48, 3), np.uint8)
    inputs = {c: CameraInput(c, FrameBuffer(params.buffer_config())) for c in params.cameras}
    inputs["cam"].latest = LatestFrame(1000 * S, rgb, "cam_optical")  # "aux" has no frame yet
    return params, inputs


def test_fuzz_describe_requests_become_jobs_or_refusals(node_inputs, robustness_report):
    """build_job (the node's service callback) then check_job (the worker's gate): a request is
    either refused with a code and a message, or becomes a job inside the node's caps."""
    params, inputs = node_inputs
    counts: collections.Counter[str] = collections.Counter()

    @settings(FUZZ, max_examples=200)  # building request messages is the slow part
    @given(req=describe_requests((40, 48), (1, 2, 7), ("cam", "aux"), 1000 * S))
    def check(req):
        now = time.monotonic()
        try:
            job = build_job(req, params, inputs, now, PreprocessConfig())
            refused = check_job(job, params.cameras)
        except RequestError as err:
            refused = err
        if refused is not None:
            assert refused.message and refused.code is not ResultCode.OK
            counts[refused.code.name] += 1
            return
        assert isinstance(job, DescribeJob)
        assert now <= job.deadline <= now + params.request_timeout_s  # == now: TIMEOUT
        assert 1 <= job.max_new_tokens <= params.max_new_tokens
        assert 1 <= job.max_frames <= params.video_max_frames
        assert math.isfinite(job.window_s) and job.window_s > 0
        assert job.object_ids and set(job.inline_masks) <= set(job.object_ids)
        assert len(job.object_ids) <= MAX_OBJECTS_PER_REQUEST  # the prompt stays bounded
        assert len(job.question) <= MAX_QUESTION_CHARS
        for m in job.inline_masks.values():
            assert m.shape == (40, 48) and m.any()
        counts["accepted"] += 1

    check()
    robustness_report(summary("DescribeRegion -> job", counts))
    assert counts["accepted"] > 10 and counts["BAD_REQUEST"] > 10
    assert counts["BAD_REGION"] and counts["NOT_READY"]


@pytest.mark.parametrize(("fields", "words"), [
    ({"object_ids": [1, 2] * 30}, "60 object ids; at most 8"),
    ({"object_ids": [1], "question": "Describe <region> " + "x" * 3000}, "at most 1000"),
    ({"object_ids": [], "regions": [RegionPrompt(object_id=i, type=RegionPrompt.TYPE_BOX,
                                                 box=RegionOfInterest(width=4, height=4))
                                    for i in range(1000)]}, "1000 inline regions"),
])
def test_oversized_requests_are_refused_before_any_work(node_inputs, fields, words):
    """Found by the cross-process fuzzer: 60 ids x 4 frames made a 9250-token prompt (+400 MiB
    on the tiny test model, gigabytes on a 2B one), and every inline region used to be drawn as
    a full-frame mask before anything was checked."""
    params, inputs = node_inputs
    with pytest.raises(RequestError, match=words) as info:
        job = build_job(DescribeRegion.Request(**fields), params, inputs, time.monotonic(),
                        PreprocessConfig())
        raise check_job(job, params.cameras)
    assert info.value.code is ResultCode.BAD_REQUEST
