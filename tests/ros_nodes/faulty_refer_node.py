"""refer_node with faults injected into its model, for tests/test_faults.py.

The real node (real rclpy, real worker, real tiny checkpoint); only `RegionPipeline.answer` is
wrapped, and a marker word in the question picks the fault:
- FAULT_RAISE: an exception inside generation (what a CUDA error looks like from Python);
- FAULT_HANG: a model call stuck for HANG_S seconds (a hung kernel or a swapped-out machine);
- FAULT_KILL: after KILL_AFTER_S, an exception that escapes the worker's per-job handlers (a
  BaseException, as a bug in the loop itself or an interpreter-level error would), so the model
  worker thread dies.
"""

from __future__ import annotations

import sys
import time

from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.ros import refer_node

HANG_S = 4.0
KILL_AFTER_S = 1.0


class WorkerKilled(BaseException):
    """Not an Exception: no per-job `except Exception` handler catches it."""


_answer = RegionPipeline.answer


def faulty_answer(self, question, *args, **kwargs):
    if "FAULT_RAISE" in question:
        raise RuntimeError("injected fault: CUDA error: an illegal memory access was encountered")
    if "FAULT_HANG" in question:
        time.sleep(HANG_S)
    if "FAULT_KILL" in question:
        time.sleep(KILL_AFTER_S)  # long enough for requests to queue behind this one
        raise WorkerKilled("injected fault: the worker loop crashed")
    return _answer(self, question, *args, **kwargs)


RegionPipeline.answer = faulty_answer

if __name__ == "__main__":
    sys.exit(refer_node.main())
