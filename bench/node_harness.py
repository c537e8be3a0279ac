"""Run the real refer_node and the bench publisher as child processes and watch them.

The node is measured from the outside, through what it already publishes: `/diagnostics`
(cumulative counters: frames received, global and token jobs, frames skipped, buffer bytes) and
`/describe_region`; its resident memory and CPU time come from /proc. Every child gets the same
ROS environment: loopback-only discovery, the shared-memory Fast DDS profile and one domain id
of its own, so a bench never talks to another bench, a test or the network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO

WORKER_STATUS = "refer_node: model worker"
CAMERA_STATUS = "refer_node: camera camera"


def ros_environment(threads: int = 1, domain_id: int | None = None) -> dict[str, str]:
    """Set (in this process, before rclpy is imported) and return the children's environment.

    `threads` caps PyTorch's intra-op pool in the node (OMP_NUM_THREADS) and here: on a shared
    2-core machine a 2-thread OpenMP pool stalls whenever one of its threads is preempted, which
    makes timings swing by 10x; one thread each is slower but honest.
    """
    import torch

    torch.set_num_threads(threads)
    if domain_id is None:  # the caller's domain (tests set one per worker), else one of ours
        domain_id = int(os.environ.get("ROS_DOMAIN_ID", 100 + os.getpid() % 100))
    domain = domain_id
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # never off loopback
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                          str(REPO / "config" / "fastdds_shm.xml"))
    os.environ.setdefault("AMENT_PREFIX_PATH", str(Path(sys.prefix)))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass
class Child:
    """One child process with its log; SIGINT first (the nodes exit cleanly), then kill."""

    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text()[-chars:]
        except OSError:
            return ""

    def rss_mib(self) -> float:
        """Resident memory now (VmRSS), MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(args: list[str], log: Path, env: dict[str, str]) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w")  # the child owns it until it exits
    proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)
    return Child(proc, log)


def start_node(model_dir: Path, params: dict[str, object], log: Path,
               env: dict[str, str]) -> Child:
    ros_args = ["-p", f"model_dir:={model_dir}"]
    for name, value in params.items():
        ros_args += ["-p", f"{name}:={value}"]
    return start(["-m", "pixelrefer_ros.ros.refer_node", "--ros-args", *ros_args], log, env)


def start_publisher(objects: int, rate: float, width: int, height: int, log: Path,
                    env: dict[str, str], id_offset: int = 0) -> Child:
    return start(["-m", "bench.stream_publisher", "--objects", str(objects), "--rate", str(rate),
                  "--width", str(width), "--height", str(height), "--id-offset",
                  str(id_offset)], log, env)


@dataclass
class Snapshot:
    """One /diagnostics message: the node's clock stamp and every value, parsed to float."""

    t: float  # header stamp, seconds (node clock)
    received: float  # this process's monotonic time
    worker: dict[str, float] = field(default_factory=dict)
    camera: dict[str, float] = field(default_factory=dict)
    cpu_s: float = float("nan")  # the node's CPU seconds, when the caller samples them


def _values(status) -> dict[str, float]:
    out = {}
    for kv in status.values:
        try:
            out[kv.key] = float(kv.value)
        except ValueError:
            continue  # text values (topics, reasons)
    return out


class Probe:
    """An rclpy node in this process: collects /diagnostics, calls /describe_region.

    Its executor spins in a background thread; callers wait on the snapshot list or on service
    futures, never spin themselves.
    """

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        from pixelrefer_ros.ros import qos
        from pixelrefer_ros_interfaces.srv import DescribeRegion

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_probe", context=self.context)
        self.snapshots: list[Snapshot] = []
        self._lock = threading.Lock()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diag_cb,
                                      qos.diagnostics_qos())
        self.client = self.node.create_client(DescribeRegion, "describe_region")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown while spinning
            pass

    def _diag_cb(self, msg) -> None:
        snap = Snapshot(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, time.monotonic())
        for status in msg.status:
            if status.name == WORKER_STATUS:
                snap.worker = _values(status)
            elif status.name == CAMERA_STATUS:
                snap.camera = _values(status)
        if snap.worker and snap.camera:
            with self._lock:
                self.snapshots.append(snap)

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self.snapshots[-1] if self.snapshots else None

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float,
                 node: Child | None = None) -> Snapshot:
        """Wait for a snapshot that satisfies predicate; fail early if the node died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.latest()
            if snap is not None and predicate(snap):
                return snap
            if node is not None and not node.alive():
                raise RuntimeError(f"refer_node exited:\n{node.tail()}")
            time.sleep(0.05)
        tail = node.tail() if node is not None else ""
        raise TimeoutError(f"no matching /diagnostics within {timeout} s\n{tail}")

    def next_snapshot(self, after: float, timeout: float = 10.0) -> Snapshot:
        """The first snapshot received after monotonic time `after`."""
        return self.wait_for(lambda s: s.received > after, timeout)

    def describe(self, request, timeout: float = 600.0):
        """Call /describe_region -> (response, client round-trip seconds)."""
        if not self.client.wait_for_service(timeout_sec=30.0):
            raise TimeoutError("describe_region not available")
        done = threading.Event()
        t0 = time.perf_counter()
        future = self.client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"no describe_region answer within {timeout} s")
        return future.result(), time.perf_counter() - t0

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)
        self._thread.join(2.0)


def wait_idle(probe: Probe, node: Child, quiet_s: float = 1.5, timeout: float = 120.0) -> None:
    """Wait until the worker ran no global/token job for `quiet_s` (the backlog is drained)."""
    deadline = time.monotonic() + timeout
    last_jobs, since = None, time.monotonic()
    while time.monotonic() < deadline:
        snap = probe.next_snapshot(time.monotonic(), timeout=30.0)
        jobs = snap.worker.get("global_jobs", 0) + snap.worker.get("token_jobs", 0)
        if jobs != last_jobs:
            last_jobs, since = jobs, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        if not node.alive():
            raise RuntimeError(f"refer_node exited:\n{node.tail()}")
    raise TimeoutError("the model worker did not go idle")
