"""Shared test fixtures: the official parity fixtures and per-process ROS isolation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "official_tiny"
if not FIXTURES.is_dir():  # a checkout that carries shared/ inside it (the GPU machine)
    FIXTURES = REPO_ROOT / "shared" / "fixtures" / "official_tiny"
OFFICIAL_CKPT = FIXTURES / "checkpoint"
CASES_DIR = FIXTURES / "cases"
CASE_NAMES = ["image_three_masks_tiny", "image_three_masks_medium", "image_three_masks_large",
              "image_relation", "video_one_object"]

# ROS isolation for every test process: loopback discovery only, a domain per process
# (pytest-xdist workers get distinct ids). Set before any rclpy import in the tests.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
os.environ.setdefault("ROS_DOMAIN_ID", str(40 + (os.getpid() % 50) + int(_worker or 0)))

# The nodes and cameras the tests start share the 2 cores with this process and with each other:
# their OpenMP threads sleep at once instead of spinning (a spinning peer on a busy machine made
# a training step ~2x slower, pixelrefer_ros/training/__init__.py). Set only after this process
# has loaded torch (and its OpenMP runtime) with the defaults.
import torch  # noqa: E402

os.environ["GOMP_SPINCOUNT"] = "0"


def load_case(case: str) -> tuple[dict, dict]:
    """Load one official case: its tensors (aliases and external PNGs resolved) and its JSON."""
    import cv2
    from safetensors.torch import load_file

    tensors = load_file(str(CASES_DIR / f"{case}.safetensors"))
    meta = json.loads((CASES_DIR / f"{case}.json").read_text())
    for name, src in meta["aliases"].items():
        tensors[name] = tensors[src]
    for name, png in meta["external_png"].items():
        bgr = cv2.imread(str(CASES_DIR / png))
        tensors[name] = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return tensors, meta


def read_rgb(path: Path):
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def read_mask(path: Path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="session")
def official_ckpt() -> Path:
    if not OFFICIAL_CKPT.is_dir():
        pytest.fail(f"official fixtures missing at {FIXTURES}")
    return OFFICIAL_CKPT


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The tiny random-weight checkpoint (tests/tiny_model.py), written once per session."""
    from tests.tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny_ckpt")


@pytest.fixture(scope="module")
def ctx():
    """An rclpy context of the test module's own (init + shutdown around the module)."""
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


# Summary lines of the robustness tests (cases run, outcome counts, skipped frames), printed in
# their own section at the end of the run, so `make test` shows what the fuzzers covered.
ROBUSTNESS_LINES: list[str] = []


@pytest.fixture(scope="session")
def robustness_report():
    def report(line: str) -> None:
        ROBUSTNESS_LINES.append(line)
        print(line)
    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if ROBUSTNESS_LINES:
        terminalreporter.section("robustness")
        for line in ROBUSTNESS_LINES:
            terminalreporter.write_line(line)
