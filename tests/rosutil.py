"""Helpers for tests that run real rclpy nodes in separate processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def ros_env(**extra: str) -> dict[str, str]:
    """The environment for a child ROS process: same domain, loopback-only discovery, and the
    Fast DDS shared-memory profile that conftest.py puts in this process's environment."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_process(args: list[str], log_path: Path, **env: str) -> subprocess.Popen:
    """Start `python args...` with its output in log_path (read it when a test fails)."""
    log = open(log_path, "w")  # the child owns it; closed when it exits
    return subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                            env=ros_env(**env), cwd=REPO_ROOT)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT first (the nodes exit cleanly on KeyboardInterrupt), then kill."""
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def spin_until(executor, predicate: Callable[[], bool], timeout: float) -> bool:
    """Spin `executor` until predicate() is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.05)
    return predicate()


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), for bounded-memory checks on child nodes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
