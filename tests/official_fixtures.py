"""The official PixelRefer-Lite parity fixtures (`shared/fixtures/official_tiny`): where they are
and how to read a case. No side effects, so the benches can use it as well as the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "official_tiny"
if not FIXTURES.is_dir():  # a checkout that carries shared/ inside it (the GPU machine)
    FIXTURES = REPO_ROOT / "shared" / "fixtures" / "official_tiny"
OFFICIAL_CKPT = FIXTURES / "checkpoint"
CASES_DIR = FIXTURES / "cases"
CASE_NAMES = ["image_three_masks_tiny", "image_three_masks_medium", "image_three_masks_large",
              "image_relation", "video_one_object"]


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


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def case_inputs(meta: dict) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The case's images (one, or the video's frames) and masks, as the official call got them."""
    pngs = meta["inputs_png"]
    files = [pngs["image"]] if meta["modal"] == "image" else pngs["frames"]
    masks = [read_mask(CASES_DIR / m) for m in pngs["masks"]]
    return [read_rgb(CASES_DIR / f) for f in files], masks
