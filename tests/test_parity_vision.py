"""Parity with the official PixelRefer-Lite fixtures, stages 1-4 (fixtures README §6-7).

Each stage is fed the fixture's own inputs (not our upstream output), so a tiny upstream
difference cannot flip a k-means assignment downstream. Stages 1-2 must match exactly; float
stages within atol 1e-4 (observed on CPU fp32: up to 2.3e-5 for the ViT features).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from pixelrefer_ros.model import preprocess as pp
from pixelrefer_ros.model.config import PixelReferConfig
from pixelrefer_ros.model.object_tokenizer import (
    ObjectTokenizer,
    kmeans,
    kmeans_static,
    position_grid,
)
from pixelrefer_ros.model.vision import VisionEncoder
from tests.official_fixtures import (
    CASE_NAMES,
    CASES_DIR,
    OFFICIAL_CKPT,
    load_case,
    read_mask,
    read_rgb,
)

ATOL = 1e-4
PASSES = {"crop": "crop", "raw": "raw_336", "local": "local_224"}  # processor pass -> stage-1 name
VIT_PREFIX = "model.vision_encoder.vision_encoder."
REGION_PREFIX = "model.region_encoder."


@functools.cache
def _config() -> PixelReferConfig:
    return PixelReferConfig.from_hf_dict(json.loads((OFFICIAL_CKPT / "config.json").read_text()))


@functools.cache
def _state_dict() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(OFFICIAL_CKPT / "model.safetensors"))


def _strip(prefix: str, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in _state_dict().items()
            if k.startswith(prefix) and not any(s in k for s in skip)}


@functools.cache
def _vision() -> VisionEncoder:
    model = VisionEncoder(_config().vision)
    model.load_state_dict(_strip(VIT_PREFIX), strict=True)
    return model.eval()


@functools.cache
def _objects() -> ObjectTokenizer:
    model = ObjectTokenizer(_config().objects)
    model.load_state_dict(_strip(REGION_PREFIX, skip=("mask_embedding",)), strict=True)
    return model.eval()


@functools.cache
def _case(case: str) -> tuple[dict, dict]:
    return load_case(case)


def _pixel_values(t: dict, p: str, i: int) -> torch.Tensor:
    return t[f"proc.{p}.mask{i}.pixel_values_u8"].float() / 127.5 - 1.0


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


# ----------------------------------------------------------------------------- stage 1

@pytest.mark.parametrize("case", CASE_NAMES)
def test_stage1_region_crops(case: str) -> None:
    t, meta = _case(case)
    inputs = meta["inputs_png"]
    frames = [inputs["image"]] if "image" in inputs else inputs["frames"]
    images = [read_rgb(CASES_DIR / f) for f in frames]
    masks = [read_mask(CASES_DIR / f) for f in inputs["masks"]]
    regions = pp.prepare_regions(images, masks, meta["mask_ids"], _config().preprocess)
    assert len(regions) == meta["num_masks"]
    for i, r in enumerate(regions):
        np.testing.assert_array_equal(r.crop, t[f"mask{i}.crop"].numpy(), err_msg=f"mask{i} crop")
        assert r.mask_grid.dtype == np.float32
        np.testing.assert_array_equal(r.mask_grid, t[f"mask{i}.mask_grid"].numpy())
        assert r.box == tuple(t[f"mask{i}.box"].tolist())
        assert r.orig_hw == tuple(t[f"mask{i}.orig_hw"].tolist())
        np.testing.assert_array_equal(r.raw_global, t[f"mask{i}.raw_336"].numpy())
        np.testing.assert_array_equal(r.local, t[f"mask{i}.local_224"].numpy())
        assert r.local_source == meta["masks"][i]["local_224_from_mask"]


def test_stage1_per_mask_local_differs_from_cache() -> None:
    """share_first_local=False gives mask1 of image_relation its own bbox crop (README §8)."""
    t, meta = _case("image_relation")
    image = read_rgb(CASES_DIR / meta["inputs_png"]["image"])
    masks = [read_mask(CASES_DIR / f) for f in meta["inputs_png"]["masks"]]
    cfg = _config().preprocess
    own = pp.prepare_regions([image], masks, [0, 0], cfg, share_first_local=False)
    np.testing.assert_array_equal(own[0].local, t["mask0.local_224"].numpy())
    assert not np.array_equal(own[1].local, t["mask1.local_224"].numpy())
    np.testing.assert_array_equal(own[1].local, pp.prepare_region(image, masks[1], cfg).local)
    assert own[1].local_source == 1


# ----------------------------------------------------------------------------- stage 2

@pytest.mark.parametrize("case", CASE_NAMES)
def test_stage2_processor(case: str) -> None:
    t, meta = _case(case)
    m = meta["num_masks"]
    for p, stage1 in PASSES.items():
        images = [t[f"mask{i}.{stage1}"].numpy() for i in range(m)]
        packed, grids = pp.patchify_pass(images, _config().preprocess)
        offset = 0
        for i, (gh, gw) in enumerate(grids):
            assert (1, gh, gw) == tuple(t[f"proc.{p}.mask{i}.grid_thw"].tolist())
            rows = torch.from_numpy(packed[offset:offset + gh * gw])
            assert rows.dtype == torch.float32
            assert torch.equal(rows, _pixel_values(t, p, i)), f"{p} mask{i}"
            offset += gh * gw
        assert offset == packed.shape[0]


# ----------------------------------------------------------------------------- stage 3

@pytest.mark.parametrize("case", CASE_NAMES)
def test_stage3_vit(case: str) -> None:
    """Each pass packs its M images in one call, like the official encoder."""
    t, meta = _case(case)
    m = meta["num_masks"]
    for p in PASSES:
        grids = [tuple(t[f"proc.{p}.mask{i}.grid_thw"].tolist()[1:]) for i in range(m)]
        with torch.no_grad():
            feats = _vision().encode_images([_pixel_values(t, p, i) for i in range(m)], grids)
        for i, f in enumerate(feats):
            assert _max_diff(f, t[f"vit.{p}.mask{i}"]) <= ATOL, f"vit.{p}.mask{i}"


# ----------------------------------------------------------------------------- stage 4

@pytest.mark.parametrize("case", CASE_NAMES)
def test_stage4_saot(case: str) -> None:
    t, meta = _case(case)
    ot = _objects()
    for i in range(meta["num_masks"]):
        crop, grid = t[f"vit.crop.mask{i}"], t[f"mask{i}.mask_grid"]
        box, hw = t[f"mask{i}.box"].tolist(), t[f"mask{i}.orig_hw"].tolist()
        pos = position_grid(crop.shape[0], crop.shape[1], box, hw)
        assert _max_diff(pos, t[f"obj.mask{i}.pos_grid"]) <= 1e-6
        assert torch.equal(grid > 0, t[f"obj.mask{i}.valid"])
        with torch.no_grad():
            gathered = ot.gather_object_cells(crop, grid, box, hw)
            assert _max_diff(gathered, t[f"obj.mask{i}.gathered"]) <= ATOL
            ref = t[f"obj.mask{i}.gathered"]
            pooled = kmeans(ref, 32, 3, init="deterministic")
            assert _max_diff(pooled, t[f"obj.mask{i}.pooled"]) <= ATOL
            static = kmeans_static(ref, torch.ones(len(ref), dtype=torch.bool), 32, 3)
            assert _max_diff(static[:len(pooled)], t[f"obj.mask{i}.pooled"]) <= ATOL
            query = ot.pool_object(crop, grid, box, hw)
            assert _max_diff(query, t["obj.pre_oci"][i]) <= ATOL
        if f"obj.mask{i}.kmeans_init_idx" in t:
            n = len(ref)
            expected = [(j * n) // 32 for j in range(32)]
            assert t[f"obj.mask{i}.kmeans_init_idx"].tolist() == expected


@pytest.mark.parametrize("case", CASE_NAMES)
def test_stage4_oci_and_projection(case: str) -> None:
    t, meta = _case(case)
    m, ot = meta["num_masks"], _objects()
    local = torch.stack([t[f"vit.local.mask{i}"].flatten(0, 1) for i in range(m)])  # [O, Pl, C]
    global_ = torch.stack([t[f"vit.raw.mask{i}"].flatten(0, 1) for i in range(m)])  # [O, Pg, C]
    with torch.no_grad():
        assert _max_diff(ot.infuse_local(t["obj.pre_oci"], local), t["obj.post_local"]) <= ATOL
        assert _max_diff(ot.infuse_global(t["obj.post_local"], global_), t["obj.post_oci"]) <= ATOL
        assert _max_diff(ot.infuse(t["obj.pre_oci"], local, global_), t["obj.post_oci"]) <= ATOL
        assert _max_diff(ot.project(t["obj.post_oci"]), t["obj.mask_feats"]) <= ATOL


@pytest.mark.parametrize("case", CASE_NAMES)
def test_stage4_forward_end_to_end(case: str) -> None:
    """The whole object tokenizer from the fixture's ViT features -> mask_feats."""
    t, meta = _case(case)
    m = meta["num_masks"]
    with torch.no_grad():
        feats = _objects()(
            [t[f"vit.crop.mask{i}"] for i in range(m)],
            [t[f"mask{i}.mask_grid"] for i in range(m)],
            [tuple(t[f"mask{i}.box"].tolist()) for i in range(m)],
            [tuple(t[f"mask{i}.orig_hw"].tolist()) for i in range(m)],
            [t[f"vit.local.mask{i}"] for i in range(m)],
            [t[f"vit.raw.mask{i}"] for i in range(m)])
    assert feats.shape == (m * 32, _config().llm.hidden_size)
    assert _max_diff(feats, t["obj.mask_feats"]) <= ATOL
