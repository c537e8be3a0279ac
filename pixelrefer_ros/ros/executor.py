"""rclpy's MultiThreadedExecutor, minus one hot loop that starved the node's subscriptions.

rclpy (Kilted 9.1.2 here; older releases' executors.py has the same loop, newer ones rework it)
yields again every task that was handed to the thread pool but has not started yet
(`Executor._wait_for_ready_callbacks`: "Yield tasks in-progress before waiting for new work"),
and `MultiThreadedExecutor` submits it to the pool again each time, without waiting. While
the GIL was busy (the model worker's Python parts, an image conversion), the spin loop went
round ~8,000 times a second and queued up to ~2,500 copies of one subscription task (a one-off
probe of the loop, 2026-11-26); the frames' real callbacks waited behind them, and ingestion of
one tracked object fell from 27 to 2-4 frames/s (`bench/bench_ingest.py`).
`tests/test_executor.py` reproduces the flood and prints the copies.

`ReferExecutor` submits each task once. When the loop is handed a task that is still waiting
for a pool thread, it sleeps a moment (releasing the GIL to the threads that have work)
instead of queueing a copy.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable

from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)

PENDING_BACKOFF_S = 0.0005  # the loop's pause when its task still waits for a pool thread


class ReferExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor that never has the same task queued in its pool twice."""

    def __init__(self, num_threads: int, *, context: Context | None = None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        self._queued: set[object] = set()  # tasks submitted to the pool, not started yet
        self._queued_lock = threading.Lock()
        self._running: list[concurrent.futures.Future] = []
        self.duplicates_avoided = 0  # tasks handed back while still queued (diagnostics, tests)

    def _run_task(self, task: Callable[[], object]) -> None:
        with self._queued_lock:
            self._queued.discard(task)
        task()

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            task, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None,
                                                                  wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):
            return
        with self._queued_lock:
            already_queued = task in self._queued
            if not already_queued:
                self._queued.add(task)
        if already_queued:
            self.duplicates_avoided += 1
            time.sleep(PENDING_BACKOFF_S)
            return
        self._running.append(self._executor.submit(self._run_task, task))
        for future in [f for f in self._running if f.done()]:
            self._running.remove(future)
            future.result()  # raise what a callback raised, as MultiThreadedExecutor does
