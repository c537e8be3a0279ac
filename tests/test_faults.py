"""Faults: the node either refuses to start with a clear message, or keeps serving with a clear
error per request; it never hangs.

- Start-up: missing, truncated and mismatched checkpoints (real node processes, bounded wait);
  TensorRT engines built for another TensorRT version or GPU, and unreadable manifests (the
  backend loader the node calls; TensorRT itself cannot be installed here, so a stand-in module
  supplies the version and a runtime that refuses the plan, as TensorRT does).
- Serving (tests/ros_nodes/faulty_refer_node.py: the real node with faults injected into the
  model): an exception inside generation, a model call that hangs, and the model worker thread
  dying. Chosen policy for the last one: no restart; diagnostics ERROR, and every request (in
  flight, queued, later) is answered MODEL_ERROR at once, naming the cause.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.runtime import ModelWorker, ResultCode, WorkerConfig, load_backend, trt_backend
from pixelrefer_ros.runtime.ort_backend import GRAPHS, EngineError
from pixelrefer_ros.runtime.trt_backend import EngineMismatchError, engine_tag
from pixelrefer_ros.synthetic import WorldConfig, generate_scene
from tests.rosutil import REPO_ROOT, spin_until, start_process, stop_process
from tests.test_worker import Spy, filled_buffer, job, wait_all_tokens

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from pixelrefer_ros_interfaces.srv import DescribeRegion  # noqa: E402
from tests.test_refer_node import Camera  # noqa: E402

R = DescribeRegion.Response
REQ = DescribeRegion.Request
S = 1_000_000_000
START_LIMIT_S = 120.0  # a node that neither serves nor exits by then counts as hung


# ------------------------------------------------------------------ refusing to start
def _broken_copy(ckpt: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    for f in ckpt.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    edit(dst)
    return dst


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _double_width(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (d / "config.json").write_text(json.dumps(cfg))


def test_bad_checkpoints_refuse_to_start_with_a_clear_message(tiny_ckpt, tmp_path):
    cases = {
        "missing": (tmp_path / "nope", "checkpoint directory", "does not exist"),
        "truncated": (_broken_copy(tiny_ckpt, tmp_path / "truncated", _truncate),
                      "model.safetensors", "not a readable safetensors file"),
        "mismatched": (_broken_copy(tiny_ckpt, tmp_path / "mismatched", _double_width),
                       "model.embed_tokens.weight", "config.json implies"),
    }
    procs = {}
    for name, (path, *_words) in cases.items():  # in parallel: each pays the imports
        log = tmp_path / f"{name}.log"
        args = ["-m", "pixelrefer_ros.ros.refer_node", "--ros-args", "--params-file",
                str(REPO_ROOT / "config/refer.yaml"), "-p", f"model_dir:={path}",
                "-p", f"cameras:=[{name}]"]
        procs[name] = (start_process(args, log), log)
    for name, (proc, log) in procs.items():
        try:
            rc = proc.wait(START_LIMIT_S)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            pytest.fail(f"{name}: the node neither started nor exited: {log.read_text()[-2000:]}")
        text = log.read_text()
        assert rc == 1, (name, text[-2000:])
        line = next(x for x in text.splitlines() if "cannot start:" in x)
        for words in cases[name][1:]:
            assert words in line, (name, line)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT 10.7 on an sm_87 GPU, as far as the backend can tell: a module with a version
    and a runtime whose deserialize returns None, which is what TensorRT does with a plan built
    by another version or for another GPU."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.7.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, data: None})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "gpu_sm", lambda device="cuda": "87")
    return trt


def _engine_dir(root: Path, ckpt_hash: str, tag: str) -> Path:
    root.mkdir()
    graphs = {g: f"{g}.{tag}.engine" for g in GRAPHS}
    for name in graphs.values():
        (root / name).write_bytes(b"ftrt" + bytes(60))  # a plan header, then nothing usable
    manifest = {"format": 1, "checkpoint": {"hash": ckpt_hash, "dir": "ckpt"},
                "engines": {tag: {"graphs": graphs}}, "axes": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_engines_for_another_tensorrt_or_gpu_are_refused(tiny_ckpt, fake_tensorrt, tmp_path):
    """The node's own loader call (load_backend), which its main() turns into `cannot start`
    and exit code 1 (as the checkpoint test above shows for every loader error)."""
    ckpt_hash = load_checkpoint(tiny_ckpt, weights=False).checkpoint_hash
    other = _engine_dir(tmp_path / "jetson", ckpt_hash, engine_tag("10.3.0", "72", "fp16"))
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10.3.0, sm_72, fp16\] but this "
                       r"machine needs \[TensorRT 10.7.0, sm_87, fp16\].*force_engine_update"):
        load_backend("tensorrt", tiny_ckpt, "cuda", "fp16", other)
    same = _engine_dir(tmp_path / "copied", ckpt_hash, engine_tag("10.7.0", "87", "fp16"))
    with pytest.raises(EngineMismatchError, match=r"has TensorRT engines for \[TensorRT 10.7.0, "
                       r"sm_87, fp16\] but this machine needs \[TensorRT 10.7.0, sm_87, bf16\]"):
        load_backend("tensorrt", tiny_ckpt, "cuda", "bf16", same)
    # The tags match but the plan files came from elsewhere: TensorRT cannot deserialize them.
    with pytest.raises(EngineMismatchError, match=r"could not deserialize.*force_engine_update"):
        load_backend("tensorrt", tiny_ckpt, "cuda", "fp16", same)


@pytest.mark.parametrize(("edit", "words"), [
    (lambda m: "{\"format\": 1, \"checkp", "not a valid manifest (JSONDecodeError"),
    (lambda m: json.dumps({**m, "checkpoint": None}), "not a valid manifest"),
    (lambda m: json.dumps([m]), "not a valid manifest"),
    (lambda m: json.dumps({**m, "format": 0}), "manifest format 0"),
    (lambda m: json.dumps({**m, "engines": {k: {"graphs": {}} for k in m["engines"]}}),
     "lists no 'vision' engine"),
])
def test_unreadable_engine_manifests_are_refused_clearly(tiny_ckpt, fake_tensorrt, tmp_path,
                                                        edit, words):
    ckpt_hash = load_checkpoint(tiny_ckpt, weights=False).checkpoint_hash
    d = _engine_dir(tmp_path / "eng", ckpt_hash, engine_tag("10.7.0", "87", "fp16"))
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(edit(manifest))
    with pytest.raises(EngineError, match=words.replace("(", r"\(")):
        load_backend("tensorrt", tiny_ckpt, "cuda", "fp16", d)


# ------------------------------------------------------------- the worker thread dying
class WorkerKilled(BaseException):
    """Escapes every per-job `except Exception`, as a bug in the worker loop would."""


class DyingSpy(Spy):
    """answer() waits for the gate, then raises what kills the worker loop."""

    def answer(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(30)
        raise WorkerKilled("the worker loop crashed")


def test_worker_death_answers_in_flight_and_queued_requests_at_once(tiny_ckpt):
    """In-process and exact; the cross-process test below shows the same through the node."""
    scene = generate_scene(5, WorldConfig(num_frames=2, min_objects=2, max_objects=2))
    buf, stamps = filled_buffer(scene, frames=2)
    spy = DyingSpy(RegionPipeline(load_checkpoint(tiny_ckpt, "float32", "cpu")))
    spy.gate = threading.Event()
    logged: list[str] = []
    worker = ModelWorker(spy, {"cam": buf}, WorkerConfig(max_queued=3), log_error=logged.append)
    worker.start()
    try:
        wait_all_tokens(buf, stamps)
        in_flight = worker.submit(job(0, timeout=60.0))
        assert spy.entered.wait(30)
        queued = [worker.submit(job(0, timeout=60.0)) for _ in range(2)]
        start = time.monotonic()
        spy.gate.set()
        results = [f.result(5) for f in (in_flight, *queued)]
        assert time.monotonic() - start < 5  # not after their 60 s deadlines
        for r in results:
            assert r.code is ResultCode.MODEL_ERROR and "model worker died" in r.message
            assert "WorkerKilled" in r.message and "restarted" in r.message
        later = worker.submit(job(0)).result(1)
        assert later.code is ResultCode.MODEL_ERROR and "died" in later.message
        stats = worker.stats()
        assert stats.state == "dead" and "WorkerKilled" in stats.last_error
        assert stats.results["MODEL_ERROR"] == 4 and any("WorkerKilled" in m for m in logged)
    finally:
        worker.stop()


# ------------------------------------------------- serving with faults, across processes
@pytest.fixture(scope="module")
def faulty(ctx, tiny_ckpt, tmp_path_factory):
    """The faulty node in its own namespace, and a camera that has given it three frames."""
    log = tmp_path_factory.mktemp("faulty") / "faulty_node.log"
    args = [str(REPO_ROOT / "tests/ros_nodes/faulty_refer_node.py"), "--ros-args",
            "--params-file", str(REPO_ROOT / "config/refer.yaml"), "-p",
            f"model_dir:={tiny_ckpt}", "-p", "max_queued_requests:=2",
            "-p", "diagnostics_period_s:=0.3", "-r", "__ns:=/faulty"]
    proc = start_process(args, log)
    cam = Camera(ctx, namespace="/faulty")
    try:
        if not cam.client.wait_for_service(timeout_sec=START_LIMIT_S):
            pytest.fail(f"the faulty node never came up:\n{log.read_text()[-3000:]}")
        assert spin_until(cam.executor, lambda: cam.image_pub.get_subscription_count() > 0, 20)
        rng = np.random.default_rng(0)
        mask = np.zeros((64, 64), np.uint8)
        mask[10:40, 20:50] = 1
        t0 = time.time_ns()
        for t in range(3):
            cam.publish(t0 + t * S // 10, rng.integers(0, 256, (64, 64, 3), np.uint8), {0: mask})
            cam.spin(0.1)
        assert cam.call(object_ids=[0], timeout=60).success
        yield proc, log, cam
    finally:
        cam.close()
        rc = stop_process(proc)
    assert rc == 0, f"the faulty node did not shut down cleanly ({rc}):\n{log.read_text()[-3000:]}"


def _timed_calls(cam: Camera, requests: list[REQ], limit_s: float,
                 stagger_s: float = 0.3) -> list[tuple[R, float]]:
    """Send the first request, let the worker take it, send the rest; -> (response, seconds
    from its own sending to its answer) for each."""
    start = time.monotonic()
    futures = [cam.client.call_async(requests[0])]
    cam.spin(stagger_s)
    sent = [0.0] + [time.monotonic() - start] * (len(requests) - 1)
    futures += [cam.client.call_async(r) for r in requests[1:]]
    done_at: dict[int, float] = {}

    def all_done() -> bool:
        for i, f in enumerate(futures):
            if f.done() and i not in done_at:
                done_at[i] = time.monotonic() - start
        return len(done_at) == len(futures)

    assert spin_until(cam.executor, all_done, limit_s), "a request was never answered"
    return [(f.result(), done_at[i] - sent[i]) for i, f in enumerate(futures)]


def _worker_diagnostics(cam: Camera) -> tuple[bytes, dict[str, str]]:
    cam.diagnostics.clear()
    assert spin_until(cam.executor, lambda: any(
        s.name.endswith("model worker") for d in cam.diagnostics for s in d.status), 10)
    status = next(s for d in reversed(cam.diagnostics) for s in d.status
                  if s.name.endswith("model worker"))
    return status.level, {kv.key: kv.value for kv in status.values} | {"message": status.message}


def test_exception_inside_generation_fails_that_request_only(faulty):
    proc, _log, cam = faulty
    resp = cam.call(object_ids=[0], question="Describe <region>. FAULT_RAISE", timeout=30)
    assert resp.error_code == R.MODEL_ERROR and not resp.success
    assert "illegal memory access" in resp.message
    assert cam.call(object_ids=[0], timeout=30).success
    level, values = _worker_diagnostics(cam)
    assert level == DiagnosticStatus.OK and values["model_state"] == "running"
    assert int(values["results.MODEL_ERROR"]) >= 1 and proc.poll() is None


def test_a_hung_model_call_never_hangs_the_callers(faulty):
    """The model is stuck for 4 s; callers with a 0.5 s timeout are answered TIMEOUT (the
    deadline plus the node's 2 s grace) or BUSY (queue full), then service resumes."""
    _proc, _log, cam = faulty
    hang = REQ(object_ids=[0], question="Describe <region>. FAULT_HANG", timeout_s=0.5)
    others = [REQ(object_ids=[0], timeout_s=0.5) for _ in range(4)]
    answers = _timed_calls(cam, [hang, *others], 15)
    codes = [r.error_code for r, _ in answers]
    assert codes[0] == R.TIMEOUT and "past the deadline" in answers[0][0].message
    assert sorted(codes[1:]) == [R.BUSY, R.BUSY, R.TIMEOUT, R.TIMEOUT]  # 2 refused, 2 queued
    assert max(t for _, t in answers) < 0.5 + 2.0 + 2.0  # timeout + the node's grace + slack
    time.sleep(2.0)  # the stuck call ends
    assert cam.call(object_ids=[0], timeout=30).success


def test_the_worker_dying_is_reported_and_every_request_fails_fast(faulty):
    """Runs last in this module (the worker does not come back)."""
    proc, log, cam = faulty
    kill = REQ(object_ids=[0], question="Describe <region>. FAULT_KILL", timeout_s=10.0)
    queued = [REQ(object_ids=[0], timeout_s=10.0) for _ in range(2)]
    answers = _timed_calls(cam, [kill, *queued], 15)
    for resp, t in answers:
        assert resp.error_code == R.MODEL_ERROR, (resp.error_code, resp.message)
        assert "model worker died" in resp.message and "WorkerKilled" in resp.message
        assert t < 6.0  # answered when the worker died (~1 s), not at its 10 s deadline
    start = time.monotonic()
    later = cam.call(object_ids=[0], timeout=10)
    assert later.error_code == R.MODEL_ERROR and "restarted" in later.message
    assert time.monotonic() - start < 2.0
    level, values = _worker_diagnostics(cam)
    assert level == DiagnosticStatus.ERROR and values["model_state"] == "dead"
    assert "model worker died" in values["message"]
    assert proc.poll() is None and "model worker died" in log.read_text()
