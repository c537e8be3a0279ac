"""The ROS-free model worker with a real FrameBuffer and a tiny random-weight pipeline."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from pixelrefer_ros.buffer import BufferConfig, FrameBuffer
from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.model.prompt import DEFAULT_PROMPT_VIDEO, relation_prompt
from pixelrefer_ros.runtime import (
    DescribeJob,
    DescribeResult,
    InlineFrame,
    Mode,
    ModelWorker,
    ResultCode,
    WorkerConfig,
)
from pixelrefer_ros.synthetic import WorldConfig, generate_scene

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a realistic wall-clock stamp
DT = S // 10  # 10 Hz camera
CAM = "cam"


@pytest.fixture(scope="module")
def pipeline(tiny_ckpt):
    return RegionPipeline(load_checkpoint(tiny_ckpt, "float32", "cpu"))


@pytest.fixture(scope="module")
def scene():
    return generate_scene(5, WorldConfig(num_frames=6, min_objects=2, max_objects=2))


class Spy:
    """Wraps the pipeline: records answer() calls; can fail or block on demand."""

    def __init__(self, inner: RegionPipeline) -> None:
        self.inner = inner
        self.calls: list[dict] = []
        self.fail_answers = 0  # raise in the next N answer() calls
        self.fail_tokens = False
        self.gate: threading.Event | None = None  # answer() waits on it when set
        self.entered = threading.Event()

    def global_features(self, image):
        return self.inner.global_features(image)

    def object_tokens(self, image, mask, global_feats):
        if self.fail_tokens:
            raise RuntimeError("object tokenizer exploded")
        return self.inner.object_tokens(image, mask, global_feats)

    def answer(self, question, object_tokens, timestamps_per_object=None, max_new_tokens=64,
               deadline=None):
        self.calls.append({"question": question, "stamps": timestamps_per_object,
                           "shapes": [tuple(t.shape) for t in object_tokens]})
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_answers:
            self.fail_answers -= 1
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return self.inner.answer(question, object_tokens, timestamps_per_object,
                                 max_new_tokens, deadline)


def filled_buffer(scene, frames: int | None = None) -> tuple[FrameBuffer, list[int]]:
    buf = FrameBuffer(BufferConfig(stamp_tolerance_s=0.02, keep_raw_s=10.0))
    stamps = []
    for t in range(frames or scene.num_frames):
        stamp = T0 + t * DT
        buf.add_frame(stamp, scene.frames[t])
        for oid in range(scene.num_objects):
            buf.add_region(oid, stamp, scene.masks[t, oid])
        stamps.append(stamp)
    return buf, stamps


@pytest.fixture
def make_worker(pipeline):
    workers: list[ModelWorker] = []

    def make(buf: FrameBuffer, **cfg) -> tuple[ModelWorker, Spy]:
        spy = Spy(pipeline)
        worker = ModelWorker(spy, {CAM: buf}, WorkerConfig(**cfg))
        worker.start()
        workers.append(worker)
        return worker, spy

    yield make
    for w in workers:
        w.stop()


def job(*ids, timeout=20.0, **kw) -> DescribeJob:
    return DescribeJob(CAM, tuple(ids), time.monotonic() + timeout, max_new_tokens=8, **kw)


def run(worker: ModelWorker, j: DescribeJob, timeout: float = 30.0) -> DescribeResult:
    return worker.submit(j).result(timeout)


def wait_all_tokens(buf: FrameBuffer, stamps: list[int], ids=(0, 1)) -> None:
    for s in stamps:
        for oid in ids:
            buf.lookup_at(oid, s, timeout_s=30.0)


def frames_of(result: DescribeResult) -> dict:
    return {f.object_id: list(f.stamps_ns) for f in result.frames_used}


def test_single_frame_latest_and_at_stamp(scene, make_worker):
    buf, stamps = filled_buffer(scene)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    r = run(worker, job(0))
    assert r.success, r
    assert frames_of(r) == {0: [stamps[-1]]}
    assert spy.calls[-1]["stamps"] is None and spy.calls[-1]["shapes"] == [(32, 32)]
    assert r.stop_reason in ("eos", "max_new_tokens") and r.tokens_generated <= 8
    assert r.prompt_tokens > 32 and r.total_s >= r.prefill_s + r.decode_s
    # A stamp 5 ms off frame 2 (tolerance 20 ms) resolves to frame 2 exactly.
    r = run(worker, job(0, mode=Mode.STAMP, stamp_ns=stamps[2] + 5_000_000))
    assert r.success and frames_of(r) == {0: [stamps[2]]}


def test_video_window_uses_several_frames_in_order(scene, make_worker):
    buf, stamps = filled_buffer(scene)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    r = run(worker, job(1, mode=Mode.WINDOW, window_s=10.0, max_frames=4))
    assert r.success, r
    used = frames_of(r)[1]
    assert len(used) == 4 and used == sorted(used) and used[-1] == stamps[-1]
    call = spy.calls[-1]
    assert call["question"] == DEFAULT_PROMPT_VIDEO
    assert call["shapes"] == [(4 * 32, 32)]
    # seconds relative to the first frame used, as the official `Time t:` blocks
    assert call["stamps"] == [[(s - used[0]) / S for s in used]] and call["stamps"][0][0] == 0.0
    # A window ending at frame 3 and 0.25 s long holds frames 1..3 (tolerance on both ends).
    r = run(worker, job(1, mode=Mode.WINDOW, stamp_ns=stamps[3], window_s=0.2, max_frames=8))
    assert r.success and frames_of(r) == {1: stamps[1:4]}


def test_relation_uses_one_common_frame(scene, make_worker):
    buf, stamps = filled_buffer(scene)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    r = run(worker, job(0, 1))
    assert r.success, r
    assert frames_of(r) == {0: [stamps[-1]], 1: [stamps[-1]]}
    assert spy.calls[-1]["question"] == relation_prompt(2)
    assert spy.calls[-1]["shapes"] == [(32, 32), (32, 32)]
    # Object 1 alone on a newer frame: the answer still uses the newest frame holding both.
    newer = stamps[-1] + DT
    buf.add_frame(newer, scene.frames[0])
    buf.add_region(1, newer, scene.masks[0, 1])
    buf.lookup_at(1, newer, timeout_s=30.0)
    r = run(worker, job(0, 1, question="Is <region> to the left of <region>?"))
    assert r.success and frames_of(r) == {0: [stamps[-1]], 1: [stamps[-1]]}


def test_request_waits_for_tokens_not_computed_yet(scene, make_worker):
    buf, stamps = filled_buffer(scene, frames=2)
    worker, _ = make_worker(buf)
    r = run(worker, job(0, 1, mode=Mode.STAMP, stamp_ns=stamps[0]))  # nothing encoded yet
    assert r.success, r
    assert frames_of(r) == {0: [stamps[0]], 1: [stamps[0]]}
    assert r.vision_s > 0


def test_inline_region_on_newest_frame(scene, make_worker):
    buf, stamps = filled_buffer(scene)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    newest = InlineFrame(stamps[-1], scene.frames[-1])
    r = run(worker, job(7, 0, inline_masks={7: scene.masks[-1, 1]}, inline_frame=newest))
    assert r.success, r
    assert frames_of(r) == {7: [stamps[-1]], 0: [stamps[-1]]}
    assert r.vision_s > 0 and len(spy.calls[-1]["shapes"]) == 2


@pytest.fixture(scope="module")
def ready_worker(pipeline, scene):
    """One worker over a fully encoded buffer, shared by the error cases (they change nothing)."""
    buf, stamps = filled_buffer(scene)
    worker = ModelWorker(Spy(pipeline), {CAM: buf}, WorkerConfig(future_wait_s=0.1))
    worker.start()
    wait_all_tokens(buf, stamps)
    yield worker, stamps
    worker.stop()


@pytest.mark.parametrize("kind", ["unknown", "too_old", "future", "no_frame", "placeholders",
                                  "no_ids", "camera", "mode", "stamp_zero", "inline_no_frame"])
def test_bad_requests_map_to_their_codes(scene, ready_worker, kind):
    worker, stamps = ready_worker
    cases = {
        "unknown": (job(99), ResultCode.UNKNOWN_OBJECT, "99"),
        "too_old": (job(0, mode=Mode.STAMP, stamp_ns=stamps[0] - 5 * S),
                    ResultCode.STAMP_TOO_OLD, "stamp"),
        "future": (job(0, mode=Mode.STAMP, stamp_ns=stamps[-1] + 5 * S),
                   ResultCode.STAMP_IN_FUTURE, "stamp"),
        "no_frame": (job(0, mode=Mode.WINDOW, stamp_ns=stamps[2] + DT // 2, window_s=0.01),
                     ResultCode.NO_FRAME, "no frame"),
        "placeholders": (job(0, question="Is <region> left of <region>?"),
                         ResultCode.BAD_REQUEST, "placeholder"),
        "no_ids": (job(), ResultCode.BAD_REQUEST, "object"),
        "camera": (DescribeJob("nope", (0,), time.monotonic() + 5), ResultCode.BAD_REQUEST,
                   "unknown camera"),
        "mode": (job(0, mode=7), ResultCode.BAD_REQUEST, "mode"),
        "stamp_zero": (job(0, mode=Mode.STAMP), ResultCode.BAD_REQUEST, "stamp"),
        "inline_no_frame": (job(3, inline_masks={3: scene.masks[0, 0]}), ResultCode.NOT_READY,
                            "no frame"),
    }
    request, code, words = cases[kind]
    r = run(worker, request)
    assert r.code is code, r
    assert not r.success and words in r.message.lower()


def test_empty_buffer_is_not_ready(make_worker):
    worker, _ = make_worker(FrameBuffer())
    r = run(worker, job(0))
    assert r.code is ResultCode.NOT_READY and "no frame" in r.message


def test_busy_when_the_queue_is_full(scene, make_worker):
    buf, stamps = filled_buffer(scene, frames=2)
    worker, spy = make_worker(buf, max_queued=2)
    wait_all_tokens(buf, stamps)
    spy.gate = threading.Event()
    first = worker.submit(job(0))
    assert spy.entered.wait(30)  # the worker is inside answer(), the queue is empty
    queued = [worker.submit(job(0)) for _ in range(2)]
    t = time.monotonic()
    busy = worker.submit(job(0)).result(1.0)
    assert time.monotonic() - t < 0.5 and busy.code is ResultCode.BUSY
    assert "retry" in busy.message and worker.stats().queue_depth == 2
    spy.gate.set()
    assert all(f.result(30).success for f in [first, *queued])
    stats = worker.stats()
    assert stats.results["OK"] == 3 and stats.results["BUSY"] == 1
    assert stats.describe_p50_s is not None and stats.describe_p95_s >= stats.describe_p50_s


def test_model_exception_is_model_error_and_worker_keeps_serving(scene, make_worker):
    buf, stamps = filled_buffer(scene, frames=2)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    spy.fail_answers = 1
    r = run(worker, job(0))
    assert r.code is ResultCode.MODEL_ERROR and "illegal memory access" in r.message
    assert run(worker, job(0)).success
    # A failing buffer job is dropped and counted, and the worker goes on.
    spy.fail_tokens = True
    buf.add_frame(stamps[-1] + DT, scene.frames[0])
    buf.add_region(0, stamps[-1] + DT, scene.masks[0, 0])
    worker.wake()
    deadline = time.monotonic() + 30
    while worker.stats().jobs_failed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.stats().jobs_failed >= 1 and "exploded" in worker.stats().last_error
    spy.fail_tokens = False
    assert run(worker, job(0, mode=Mode.STAMP, stamp_ns=stamps[0])).success


def test_timeouts(scene, make_worker):
    buf, stamps = filled_buffer(scene, frames=2)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    spy.gate = threading.Event()
    blocker = worker.submit(job(0))
    assert spy.entered.wait(30)
    late = worker.submit(job(0, timeout=0.2))  # its deadline passes while it waits in the queue
    time.sleep(0.4)
    spy.gate.set()
    r = late.result(30)
    assert r.code is ResultCode.TIMEOUT and "waited" in r.message and r.queue_s >= 0.2
    assert blocker.result(30).success
    # A deadline reached inside generation: TIMEOUT with the stop reason, partial text allowed.
    spy.gate = threading.Event()
    cut = worker.submit(job(0, timeout=0.3))
    assert spy.entered.wait(30)
    time.sleep(0.4)
    spy.gate.set()
    r = cut.result(30)
    assert r.code is ResultCode.TIMEOUT and r.stop_reason == "deadline"


def test_stop_answers_queued_jobs(scene, make_worker):
    buf, stamps = filled_buffer(scene, frames=1)
    worker, spy = make_worker(buf)
    wait_all_tokens(buf, stamps)
    spy.gate = threading.Event()
    first = worker.submit(job(0))
    assert spy.entered.wait(30)
    queued: Future = worker.submit(job(0))
    threading.Timer(0.2, spy.gate.set).start()
    worker.stop()
    assert first.result(30).success
    assert queued.result(5).code is ResultCode.NOT_READY
    assert worker.submit(job(0)).result(1).code is ResultCode.NOT_READY


def test_result_codes_match_the_service_definition():
    srv = pytest.importorskip("pixelrefer_ros_interfaces.srv")
    for code in ResultCode:
        assert getattr(srv.DescribeRegion.Response, code.name) == code.value
    assert [m.value for m in Mode] == [srv.DescribeRegion.Request.MODE_LATEST,
                                       srv.DescribeRegion.Request.MODE_STAMP,
                                       srv.DescribeRegion.Request.MODE_WINDOW]
    assert np.uint8(ResultCode.NOT_READY) == 10
