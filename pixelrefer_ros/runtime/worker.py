"""The one thread that runs the model (ROS-free).

Concurrency: `ModelWorker` owns the model; nothing else calls it, so the model (and later a
TensorRT context) is never entered concurrently. Other threads only `submit` describe jobs (a
bounded queue: a full queue is answered BUSY at once), `wake` the worker when input arrived, and
read `stats`. The loop serves queued describe jobs first; otherwise it runs ONE buffer job,
claimed in small rounds from every camera's `FrameBuffer.pending_work`, without any lock held,
and hands the result back tagged with the job's epoch (`set_global` / `set_tokens`, or
`fail_job`). So a new request waits for at most one model call before it is served.

A describe job resolves its object tokens through the buffer lookups. The worker never blocks in
a lookup waiting for tokens (it is the one that computes them): on TOKENS_NOT_READY it runs
buffer work itself and retries until the job's deadline. Video timestamps are seconds relative
to the first frame used by the request (official `Time t:` blocks are seconds from the clip's
start, `frame_idx / fps`), so a clip always starts at "Time 0.0".

Faults: an exception in a model call fails that job only (MODEL_ERROR for a request, a counted
failure for a buffer job). An exception that escapes the loop itself kills the worker for good;
it answers the request in flight and the queued ones MODEL_ERROR, and so does `submit` from
then on (see `_run` for why there is no restart).
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np
import torch

from pixelrefer_ros.buffer import (
    ErrorCode,
    FrameBuffer,
    FrameBufferError,
    GlobalJob,
    ObjectId,
    ObjectTokens,
    TokenJob,
)
from pixelrefer_ros.runtime.backend import RegionModel
from pixelrefer_ros.runtime.jobs import (
    BUFFER_CODES,
    NS,
    DescribeJob,
    DescribeResult,
    FramesUsed,
    Mode,
    RequestError,
    ResultCode,
    check_job,
    default_question,
)


@dataclass(frozen=True)
class WorkerConfig:
    max_queued: int = 4  # describe jobs waiting; more are answered BUSY
    future_wait_s: float = 0.5  # how long a stamp just ahead of the newest frame may wait for it
    idle_wait_s: float = 0.1  # sleep when there is nothing to do (wake() cuts it short)
    poll_s: float = 0.02  # re-check period while a job waits for tokens or frames
    # Token jobs claimed per buffer round (plus one global). The buffer hands out jobs newest
    # frame first; claiming all of a frame's objects at once keeps, under overload, every
    # encoded frame complete (a relation needs both objects in one frame) instead of starving
    # all but the first object. Jobs run one at a time: a describe request waits for one job.
    tokens_per_round: int = 4
    latency_window: int = 256  # describe latencies kept for p50/p95


@dataclass(frozen=True)
class WorkerStats:
    state: str  # "created" | "running" | "stopped" | "dead"
    queue_depth: int
    max_queued: int
    requests: int
    results: dict[str, int]  # ResultCode name -> count
    describe_p50_s: float | None
    describe_p95_s: float | None
    global_jobs: int
    token_jobs: int
    jobs_failed: int
    frames_skipped: int
    last_error: str


class ModelWorker:
    """One thread; owns the model. See the module docstring for the scheduling rules."""

    def __init__(self, model: RegionModel, buffers: Mapping[str, FrameBuffer],
                 config: WorkerConfig | None = None,
                 log_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.buffers = dict(buffers)
        self.config = config or WorkerConfig()
        self._log = log_error or (lambda msg: None)
        self._clock = clock
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.max_queued)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pixelrefer-model-worker",
                                        daemon=True)
        self._state = "created"
        # Counters are written by the worker thread and by submit() (executor threads), read by
        # the diagnostics timer: one lock for all of them.
        self._lock = threading.Lock()
        self._results: collections.Counter[str] = collections.Counter()
        self._count: collections.Counter[str] = collections.Counter()
        self._latencies: collections.deque[float] = collections.deque(
            maxlen=self.config.latency_window)
        self._last_error = ""
        self._last_job_log = -math.inf
        self._rr = 0  # round-robin start over cameras
        # Buffer jobs claimed from pending_work but not run yet (worker thread only).
        self._claimed: collections.deque[tuple[str, GlobalJob | TokenJob]] = collections.deque()
        self._current: Future | None = None  # the describe job being served (worker thread)

    # ------------------------------------------------------------------ called by other threads
    def start(self) -> None:
        self._state = "running"
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current model call; queued jobs are answered NOT_READY."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            self._state = "stopped" if self._state != "dead" else "dead"
            left = self._take_queued()
        self._answer_all(left, DescribeResult(ResultCode.NOT_READY, "the node is shutting down"))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def wake(self) -> None:
        """New frame, region or request: cut the idle sleep short."""
        self._wake.set()

    def submit(self, job: DescribeJob) -> Future:
        """Queue a describe job -> Future[DescribeResult]. Never blocks: invalid jobs, a full
        queue (BUSY) and a stopped worker resolve the future at once."""
        fut: Future = Future()
        refused = check_job(job, list(self.buffers))
        # Under the lock: a worker that dies takes the queue under it too, so no job can slip
        # into the queue after the dying worker answered everything in it.
        with self._lock:
            self._count["requests"] += 1
            if refused is None and self._state == "dead":
                refused = RequestError(ResultCode.MODEL_ERROR, self._last_error)
            elif refused is None and not self.alive:
                refused = RequestError(ResultCode.NOT_READY, "the model worker is not running")
            if refused is None:
                try:
                    self._queue.put_nowait((job, fut, self._clock()))
                except queue.Full:
                    refused = RequestError(ResultCode.BUSY, f"{self.config.max_queued} "
                                            "request(s) already wait for the model worker; "
                                            "retry later")
                else:
                    self._wake.set()
                    return fut
        result = DescribeResult(refused.code, refused.message)
        self._record(result)
        fut.set_result(result)
        return fut

    def stats(self) -> WorkerStats:
        with self._lock:
            lat = np.array(self._latencies) if self._latencies else None
            return WorkerStats(
                state=self._state, queue_depth=self._queue.qsize(),
                max_queued=self.config.max_queued, requests=self._count["requests"],
                results=dict(self._results),
                describe_p50_s=None if lat is None else float(np.percentile(lat, 50)),
                describe_p95_s=None if lat is None else float(np.percentile(lat, 95)),
                global_jobs=self._count["global_jobs"], token_jobs=self._count["token_jobs"],
                jobs_failed=self._count["jobs_failed"],
                frames_skipped=self._count["frames_skipped"], last_error=self._last_error)

    # ------------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
                if item is not None:
                    self._serve(*item)
                elif not self._buffer_step():
                    self._wake.wait(self.config.idle_wait_s)
                    self._wake.clear()
        except BaseException as exc:  # a bug in this loop: report it, never hang the node
            # No restart: an exception that escaped every per-job handler means the loop's own
            # state (or the model's, e.g. a lost CUDA context) cannot be trusted. The node stays
            # up and says so: diagnostics ERROR, and every request, the one in flight and the
            # queued ones included, gets MODEL_ERROR at once instead of waiting out its timeout.
            message = (f"the model worker died ({type(exc).__name__}: {exc}); requests fail "
                       "until the node is restarted")
            with self._lock:
                self._state, self._last_error = "dead", message
                left = self._take_queued()
            if self._current is not None:
                left.insert(0, self._current)
            self._log(f"{message}\n{traceback.format_exc()}")
            self._answer_all(left, DescribeResult(ResultCode.MODEL_ERROR, message))

    def _take_queued(self) -> list[Future]:
        """Empty the request queue (caller holds the lock) -> the futures still waiting."""
        futures = []
        while True:
            try:
                futures.append(self._queue.get_nowait()[1])
            except queue.Empty:
                return futures

    def _answer_all(self, futures: list[Future], result: DescribeResult) -> None:
        for fut in futures:
            if not fut.done() and (fut.running() or fut.set_running_or_notify_cancel()):
                self._record(result)
                fut.set_result(result)

    def _serve(self, job: DescribeJob, fut: Future, submitted: float) -> None:
        if not fut.set_running_or_notify_cancel():
            return  # the caller gave up waiting before the worker got here
        self._current = fut  # left set if an exception escapes: the dying loop answers it
        self._serve_running(job, fut, submitted)
        self._current = None

    def _serve_running(self, job: DescribeJob, fut: Future, submitted: float) -> None:
        start = self._clock()
        try:
            result = self._describe(job, start - submitted)
        except RequestError as failed:
            result = DescribeResult(failed.code, failed.message)
        except Exception as exc:  # the model failed on this request; keep serving the rest
            result = DescribeResult(ResultCode.MODEL_ERROR, f"{type(exc).__name__}: {exc}")
            self._set_error(result.message)
            self._log(f"describe on camera {job.camera!r} failed: {traceback.format_exc()}")
        result = replace(result, queue_s=start - submitted, total_s=self._clock() - submitted)
        self._record(result)
        fut.set_result(result)

    def _describe(self, job: DescribeJob, queue_s: float) -> DescribeResult:
        if self._clock() >= job.deadline:
            raise RequestError(ResultCode.TIMEOUT, f"the deadline passed while the request "
                                f"waited {queue_s:.3f} s for the model worker")
        mode = Mode(job.mode)
        question = job.question or default_question(mode, len(job.object_ids))
        t0 = time.perf_counter()
        tokens: dict[ObjectId, list[ObjectTokens]] = {}
        if job.inline_masks:
            frame = job.inline_frame
            assert frame is not None  # check_job
            feats = self.model.global_features(frame.image)
            for oid, mask in job.inline_masks.items():
                t = self.model.object_tokens(frame.image, mask, feats)
                tokens[oid] = [ObjectTokens(oid, frame.stamp_ns, t, 0)]
        vision_s = time.perf_counter() - t0  # inline regions ...
        buffered = [oid for oid in job.object_ids if oid not in job.inline_masks]
        found, work_s = self._resolve(job, buffered)
        tokens.update(found)
        vision_s += work_s  # ... plus buffer work done while this request waited for tokens
        frames = tuple(FramesUsed(oid, tuple(t.stamp_ns for t in tokens[oid]))
                       for oid in job.object_ids)
        blocks = [torch.cat([t.tokens for t in tokens[oid]]) for oid in job.object_ids]
        stamps = None
        if mode is Mode.WINDOW:
            first = min(s for f in frames for s in f.stamps_ns)
            stamps = [[(s - first) / NS for s in f.stamps_ns] for f in frames]
        answer = self.model.answer(question, blocks, stamps, job.max_new_tokens, job.deadline)
        code, message = ResultCode.OK, ""
        if answer.stopped == "deadline":
            code = ResultCode.TIMEOUT
            message = (f"the deadline cut the answer after {len(answer.token_ids)} token(s); "
                       "the partial text is in `text`")
        return DescribeResult(
            code, message, text=answer.text, question=question, frames_used=frames,
            prompt_tokens=answer.prompt_tokens, tokens_generated=len(answer.token_ids),
            stop_reason=answer.stopped, vision_s=vision_s, prefill_s=answer.prefill_s,
            decode_s=answer.decode_s)

    def _resolve(self, job: DescribeJob, ids: list[ObjectId]
                 ) -> tuple[dict[ObjectId, list[ObjectTokens]], float]:
        """Buffer lookups for `ids` -> (tokens, seconds of buffer work done meanwhile). Waits
        (doing buffer work) for tokens not ready yet and, for at most future_wait_s, for a stamp
        just ahead of the newest frame."""
        if not ids:
            return {}, 0.0
        buf = self.buffers[job.camera]
        future_since: float | None = None
        work_s = 0.0
        while True:
            try:
                return self._resolve_once(buf, job, ids), work_s
            except FrameBufferError as err:
                now = self._clock()
                if err.code is ErrorCode.TOKENS_NOT_READY:
                    if now >= job.deadline:
                        raise RequestError(ResultCode.TIMEOUT, "object tokens were not ready "
                                            f"before the deadline: {err.message}") from None
                elif err.code is ErrorCode.STAMP_IN_FUTURE:
                    future_since = now if future_since is None else future_since
                    if now >= min(job.deadline, future_since + self.config.future_wait_s):
                        raise RequestError(ResultCode.STAMP_IN_FUTURE, err.message) from None
                else:
                    raise RequestError(BUFFER_CODES[err.code], err.message) from None
                t0 = time.perf_counter()
                worked = self._buffer_step(prefer=job.camera, focus_ns=self._focus(job))
                work_s += time.perf_counter() - t0
                if not worked:
                    self._wake.wait(min(self.config.poll_s, max(job.deadline - now, 0.0)))
                    self._wake.clear()

    def _resolve_once(self, buf: FrameBuffer, job: DescribeJob, ids: list[ObjectId]
                      ) -> dict[ObjectId, list[ObjectTokens]]:
        mode = Mode(job.mode)
        if mode is Mode.STAMP:
            return {oid: [buf.lookup_at(oid, job.stamp_ns)] for oid in ids}
        if mode is Mode.WINDOW:
            end = job.stamp_ns or buf.stats().newest_stamp_ns
            if end is None:
                raise RequestError(ResultCode.NOT_READY, f"no frame buffered yet on camera "
                                    f"{job.camera!r}")
            start = end - round(job.window_s * NS)
            return {oid: buf.lookup_window(oid, start, end, job.max_frames) for oid in ids}
        latest = {oid: buf.lookup_latest(oid) for oid in ids}
        if len({t.stamp_ns for t in latest.values()}) == 1:
            return {oid: [t] for oid, t in latest.items()}
        # Several objects: the newest frame that holds tokens of all of them.
        end = max(t.stamp_ns for t in latest.values())
        ready = {oid: {t.stamp_ns: t for t in buf.lookup_window(oid, 0, end, 1 << 30)}
                 for oid in ids}
        common = set.intersection(*(set(r) for r in ready.values()))
        if not common:
            newest = {oid: t.stamp_ns for oid, t in latest.items()}
            raise RequestError(ResultCode.NO_FRAME, f"objects {list(ids)} have no frame with "
                                f"tokens for all of them (newest per object: {newest})")
        best = max(common)
        return {oid: [ready[oid][best]] for oid in ids}

    def _focus(self, job: DescribeJob) -> tuple[int, int] | None:
        """The stamps a waiting request needs, so their buffer jobs run first."""
        mode = Mode(job.mode)
        tol = self.buffers[job.camera].config.tolerance_ns
        if mode is Mode.STAMP:
            return job.stamp_ns - tol, job.stamp_ns + tol
        if mode is Mode.WINDOW and job.stamp_ns:
            return job.stamp_ns - round(job.window_s * NS) - tol, job.stamp_ns + tol
        return None

    def _buffer_step(self, prefer: str | None = None,
                     focus_ns: tuple[int, int] | None = None) -> bool:
        """Run ONE buffer job: the next one already claimed, else claim a new round (up to
        tokens_per_round token jobs and one global job of the first camera with work, `prefer`
        first). One job per step lets a describe request in between jobs of a round; claimed
        jobs wait in `_claimed`, and every step runs them first, so none is ever stranded."""
        if not self._claimed:
            self._claim_round(prefer, focus_ns)
        if not self._claimed:
            return False
        name, job = self._claimed.popleft()
        self._run_buffer_job(name, self.buffers[name], job)
        return True

    def _claim_round(self, prefer: str | None, focus_ns: tuple[int, int] | None = None) -> None:
        names = list(self.buffers)
        self._rr = (self._rr + 1) % len(names)
        order = names[self._rr:] + names[:self._rr]
        if prefer in self.buffers:
            order.remove(prefer)
            order.insert(0, prefer)
        for name in order:
            focus = focus_ns if name == prefer else None
            plan = self.buffers[name].pending_work(max_globals=1, focus_ns=focus,
                                                   max_tokens=self.config.tokens_per_round)
            if plan.skipped_stamps:
                with self._lock:
                    self._count["frames_skipped"] += len(plan.skipped_stamps)
            if not plan.empty:  # tokens of encoded frames first, then the next frame's global
                self._claimed.extend((name, job) for job in (*plan.token_jobs, *plan.global_jobs))
                return

    def _run_buffer_job(self, camera: str, buf: FrameBuffer, job: GlobalJob | TokenJob) -> None:
        kind = "global_jobs" if isinstance(job, GlobalJob) else "token_jobs"
        try:
            if job.image is None:
                raise RuntimeError(f"frame {job.stamp_ns} has no image left")
            if isinstance(job, GlobalJob):
                buf.set_global(job.stamp_ns, self.model.global_features(job.image),
                               epoch=job.epoch)
            else:
                if job.global_payload is None:
                    raise RuntimeError(f"frame {job.stamp_ns} has no global features")
                tokens = self.model.object_tokens(job.image, job.region, job.global_payload)
                buf.set_tokens(job.object_id, job.stamp_ns, tokens, epoch=job.epoch)
        except Exception as exc:  # a bad input must not stop the worker or be retried forever
            buf.fail_job(job)
            with self._lock:
                self._count["jobs_failed"] += 1
            self._set_error(f"{kind[:-5]} job on camera {camera!r} frame {job.stamp_ns}: "
                            f"{type(exc).__name__}: {exc}")
            if self._clock() - self._last_job_log > 5.0:  # throttled: bad inputs repeat
                self._last_job_log = self._clock()
                self._log(self._last_error)
            return
        with self._lock:
            self._count[kind] += 1

    def _record(self, result: DescribeResult) -> None:
        with self._lock:
            self._results[result.code.name] += 1
            if result.success:
                self._latencies.append(result.total_s)

    def _set_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message
