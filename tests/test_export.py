"""pixelrefer-export end to end: export the built-in model (the official tiny checkpoint until
models/shapes exists) and the official tiny checkpoint, verify every graph and the greedy text
against torch (and the official greedy ids through onnxruntime), and check the
backend seam, the engine-directory guards and the TensorRT tagging logic (TensorRT itself is
not installable here, so only its pure-Python parts run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pixelrefer_ros.model.loader import load_checkpoint
from pixelrefer_ros.model.pipeline import RegionPipeline
from pixelrefer_ros.runtime.ort_backend import EngineError, OrtBackend, read_manifest
from pixelrefer_ros.runtime.stages import (
    CropFeatures,
    StageBackend,
    TorchBackend,
    make_backend,
    object_graph_inputs,
    vision_graph_inputs,
)
from pixelrefer_ros.runtime.trt_backend import (
    EngineMismatchError,
    engine_tag,
    find_engines,
    parse_tag,
)
from tests.official_fixtures import CASE_NAMES, CASES_DIR, OFFICIAL_CKPT, REPO_ROOT, load_case
from tests.test_end_to_end import case_inputs

SHAPES = REPO_ROOT / "models" / "shapes"
CKPT = SHAPES if (SHAPES / "config.json").is_file() else OFFICIAL_CKPT
ATOL = {"vision": 2e-4, "objects": 1e-4, "prefill": 1e-4, "decode": 1e-4}


def export_and_verify(ckpt, out) -> tuple:
    """One CLI run: export + --verify on the fixture cases and one synthetic scene pair."""
    run = subprocess.run(
        [sys.executable, "-m", "export.cli", str(ckpt), "--out", str(out), "--verify",
         "--verify-cases", str(CASES_DIR), "--synthetic-scenes", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple:
    return export_and_verify(CKPT, tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(CKPT, "float32")


@pytest.fixture(scope="module")
def ort_pipeline(exported, loaded) -> RegionPipeline:
    return RegionPipeline(loaded, OrtBackend(exported[0], loaded.checkpoint_hash))


def test_manifest_describes_the_export(exported, loaded) -> None:
    out, _ = exported
    m = read_manifest(out, loaded.checkpoint_hash)
    assert m["opset"] == 18 and m["onnx_precision"] == "fp32"
    assert m["checkpoint"]["hash"] == load_checkpoint(CKPT, weights=False).checkpoint_hash
    assert set(m["graphs"]) == {"vision", "objects", "prefill", "decode"}
    for name, g in m["graphs"].items():
        assert (out / g["file"]).is_file(), name
    assert m["graphs"]["vision"]["inputs"]["pixel_values"]["shape"] == ["patches", 588]
    assert m["graphs"]["decode"]["outputs"]["present_k"]["shape"][3] == "past+1"
    assert m["axes"]["patches"] == {"min": 16, "opt": 576, "max": 8192}
    assert m["axes"]["local_patches"]["max"] == 256 and m["axes"]["global_patches"]["max"] == 576
    assert all(m["tools"][t] for t in ("torch", "onnx", "onnxruntime", "onnxscript"))
    assert m["verify"]["passed"] and m["engines"] == {}


def test_session_io_matches_manifest(exported, loaded) -> None:
    out, _ = exported
    backend = OrtBackend(out, loaded.checkpoint_hash)
    m = backend.manifest
    for name, sess in backend.sessions.items():
        assert [i.name for i in sess.get_inputs()] == list(m["graphs"][name]["inputs"])
        assert [o.name for o in sess.get_outputs()] == list(m["graphs"][name]["outputs"])


def test_verify_parity_numbers(exported) -> None:
    out, stdout = exported
    report = json.loads((out / "verify.json").read_text())
    assert "PASSED" in stdout
    for kind in ("random", "real"):
        for graph, outputs in report[kind].items():
            for output, d in outputs.items():
                assert d["max_abs"] < ATOL[graph], (kind, graph, output, d)
    assert set(CASE_NAMES) <= set(report["text"])
    assert all(t["identical"] and t["tokens"] > 0 for t in report["text"].values())


@pytest.fixture(scope="module")
def official_ort_pipeline(tmp_path_factory) -> RegionPipeline:
    """The official tiny checkpoint exported and verified too: its greedy ids are the parity
    target of the official implementation."""
    if CKPT == OFFICIAL_CKPT:
        out = export_and_verify(CKPT, tmp_path_factory.mktemp("official_engines"))[0]
    else:
        out, stdout = export_and_verify(OFFICIAL_CKPT, tmp_path_factory.mktemp("official"))
        assert "PASSED" in stdout
    loaded = load_checkpoint(OFFICIAL_CKPT, "float32")
    return RegionPipeline(loaded, OrtBackend(out, loaded.checkpoint_hash))


@pytest.mark.parametrize("case", ["image_three_masks_medium", "video_one_object"])
def test_onnxruntime_reproduces_official_tokens(official_ort_pipeline, case) -> None:
    tensors, meta = load_case(case)
    images, masks = case_inputs(meta)
    answer = official_ort_pipeline.describe(images, masks, meta["mask_ids"], meta["instruct"],
                                   meta["modal"], meta["timestamps"], meta["mask_ids_raw"],
                                   max_new_tokens=16)
    assert answer.token_ids == tensors["llm.greedy_ids"].tolist()
    assert answer.text == meta["llm"]["mm_infer_output"]


def test_incremental_path_matches_torch(ort_pipeline, loaded) -> None:
    """The node's calls (global once per frame, tokens per object, answer) on both backends."""
    ref = RegionPipeline(loaded)
    _, meta = load_case("image_relation")
    images, masks = case_inputs(meta)
    out = {}
    for name, p in (("torch", ref), ("ort", ort_pipeline)):
        g = p.global_features(images[0])
        tokens = [p.object_tokens(images[0], m, g) for m in masks]
        out[name] = (g, tokens, p.answer(meta["instruct"], tokens, None, max_new_tokens=8))
    torch.testing.assert_close(out["ort"][0], out["torch"][0], atol=2e-4, rtol=0)
    for a, b in zip(out["ort"][1], out["torch"][1], strict=True):
        torch.testing.assert_close(a, b, atol=3e-4, rtol=0)  # ViT noise included
    assert out["ort"][2].token_ids == out["torch"][2].token_ids
    deadline = ort_pipeline.answer(meta["instruct"], out["ort"][1], None, 8, deadline=0.0)
    assert deadline.stopped == "deadline" and deadline.token_ids == []


def test_objects_graph_edge_cases(exported, loaded) -> None:
    """Invalid padding cells change nothing; no valid cell and <= K cells match torch."""
    backend = OrtBackend(exported[0], loaded.checkpoint_hash)
    ref = TorchBackend(loaded.model)
    c = loaded.config.vision.hidden_size
    g = torch.Generator().manual_seed(3)
    local, glob = torch.randn(1, 256, c, generator=g), torch.randn(1, 576, c, generator=g)
    for keep in (0.0, 0.2, 0.9):
        grid = (torch.rand(8, 9, generator=g) < keep).float()
        crop = CropFeatures(torch.randn(8, 9, c, generator=g), grid, (5, 6, 120, 140),
                            (240, 320))
        with torch.inference_mode():
            expected = ref.object_tokens([crop], local, glob)
        torch.testing.assert_close(backend.object_tokens([crop], local, glob), expected,
                                   atol=1e-4, rtol=0)
        cells, pos, valid = object_graph_inputs(crop)
        pad = 37  # extra invalid cells, e.g. a fixed-size TensorRT buffer
        feeds = {"cells": torch.cat([cells, torch.randn(pad, c, generator=g)]).numpy(),
                 "positions": torch.cat([pos, torch.rand(pad, 2, generator=g)]).numpy(),
                 "valid": torch.cat([valid, torch.zeros(pad, dtype=torch.bool)]).numpy(),
                 "local": local[0].numpy(), "global": glob[0].numpy()}
        (padded,) = backend.sessions["objects"].run(None, feeds)
        np.testing.assert_allclose(padded, expected.numpy(), atol=1e-4, rtol=0)


def test_vision_graph_packs_images_block_diagonally(exported, loaded) -> None:
    """The backends call the vision graph per image; the graph itself also takes packed
    images (segments), e.g. for a batching TensorRT caller."""
    backend = OrtBackend(exported[0], loaded.checkpoint_hash)
    grids = [(5, 7), (4, 4), (6, 3)]
    g = torch.Generator().manual_seed(4)
    pv = torch.rand(sum(a * b for a, b in grids), 588, generator=g) * 2 - 1
    positions, segments = vision_graph_inputs(grids)
    (packed,) = backend.sessions["vision"].run(None, {"pixel_values": pv.numpy(),
                                                      "positions": positions,
                                                      "segments": segments})
    with torch.inference_mode():
        ref = loaded.model.vision(pv, grids)
    np.testing.assert_allclose(packed, ref.numpy(), atol=2e-4, rtol=0)
    torch.testing.assert_close(backend.encode(pv, grids), ref, atol=2e-4, rtol=0)


def test_engine_dir_guards(exported, loaded, tmp_path) -> None:
    with pytest.raises(EngineError, match=r"no manifest\.json"):
        OrtBackend(tmp_path, loaded.checkpoint_hash)
    with pytest.raises(EngineError, match="exported from checkpoint hash"):
        OrtBackend(exported[0], "0123456789abcdef")
    with pytest.raises(ValueError, match="not in this onnxruntime build"):
        OrtBackend(exported[0], loaded.checkpoint_hash, providers=["cuda"])
    with pytest.raises(ValueError, match="choose one of: torch, onnxruntime, tensorrt"):
        make_backend("onnx", loaded)
    with pytest.raises(ValueError, match="needs an engine directory"):
        make_backend("onnxruntime", loaded)
    with pytest.raises(ValueError, match="fp32 ONNX graphs"):
        make_backend("onnxruntime", loaded, exported[0], precision="fp16")
    backend = make_backend("onnxruntime", loaded, exported[0], providers=["cpu"])
    assert backend.name == "onnxruntime" and backend.providers == ["CPUExecutionProvider"]
    with pytest.raises(NotImplementedError):
        StageBackend().embed(torch.tensor([1]))


def test_light_load_runs_onnxruntime_without_torch_weights(exported) -> None:
    light = load_checkpoint(CKPT, weights=False)
    assert light.model is None
    pipeline = RegionPipeline(light, make_backend("onnxruntime", light, exported[0]))
    _, meta = load_case("image_three_masks_medium")
    images, masks = case_inputs(meta)
    tokens = pipeline.object_tokens(images[0], masks[0])
    assert tokens.shape == (light.config.objects.tokens_per_object, light.config.llm.hidden_size)
    with pytest.raises(ValueError, match="needs the checkpoint weights"):
        make_backend("torch", light)


def test_tensorrt_tags_and_mismatch_messages(tmp_path) -> None:
    tag = engine_tag("10.7.0", "87", "fp16")
    assert tag == "trt10.7.0_sm87_fp16"
    assert parse_tag(tag) == {"trt": "10.7.0", "sm": "87", "precision": "fp16"}
    with pytest.raises(ValueError, match="choose one of: fp32, fp16, bf16"):
        engine_tag("10.7.0", "87", "int8")
    graphs = {g: f"{g}.{tag}.engine" for g in ("vision", "objects", "prefill", "decode")}
    manifest = {"engines": {tag: {"graphs": graphs}}}
    with pytest.raises(EngineError, match="has no TensorRT engines"):
        find_engines({"engines": {}}, tmp_path, tag)
    other = engine_tag("10.3.0", "89", "fp16")
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10.7.0, sm_87, fp16.*needs "
                       r"\[TensorRT 10.3.0, sm_89, fp16\].*force_engine_update:=true"):
        find_engines(manifest, tmp_path, other)
    with pytest.raises(EngineError, match="missing"):
        find_engines(manifest, tmp_path, tag)
    for f in graphs.values():
        (tmp_path / f).write_bytes(b"")
    assert find_engines(manifest, tmp_path, tag)["decode"] == tmp_path / graphs["decode"]


def test_tensorrt_profiles_and_missing_tensorrt(exported, tmp_path) -> None:
    from export.trt_build import profile_shapes

    manifest = read_manifest(exported[0])
    shapes = profile_shapes(manifest, "decode")
    layers = manifest["model"]["layers"]
    assert shapes["token"] == ((1, 1),) * 3
    assert shapes["past_k"][0][3] == 1 and shapes["past_k"][2][3] == 4095
    assert shapes["past_k"][1][0] == layers
    assert profile_shapes(manifest, "objects")["global"][2][0] == 576
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed: the missing-TensorRT path cannot be tested")
    copy = tmp_path / "eng"
    shutil.copytree(exported[0], copy)
    run = subprocess.run([sys.executable, "-m", "export.cli", str(CKPT), "--out", str(copy),
                          "--skip-onnx", "--tensorrt", "--precision", "fp16"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "TensorRT Python package" in run.stderr
    light = load_checkpoint(CKPT, weights=False)
    with pytest.raises(ValueError, match="CUDA device"):
        make_backend("tensorrt", light, copy)
    with pytest.raises(ImportError, match="backend:=onnxruntime"):
        make_backend("tensorrt", light, copy, device="cuda")


def test_bench_backends_smoke(exported, tmp_path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "-m", "bench.bench_backends", str(CKPT),
                          "--engine-dir", str(exported[0]), "--repeats", "1", "--threads", "1",
                          "--json", str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"global_encode", "object_encode", "object_tokens",
                                      "prefill", "decode_step"}
    assert result["results"]["prefill"]["onnxruntime"]["median_s"] > 0
    assert "cpu" in result["machine"]


def test_node_loader_builds_onnxruntime_backend(exported) -> None:
    from pixelrefer_ros.runtime.backend import load_backend

    backend = load_backend("onnxruntime", CKPT, engine_dir=exported[0])
    assert backend.name == "onnxruntime"
    assert backend.model.backend.name == "onnxruntime" and backend.model.model is None
    _, meta = load_case("image_three_masks_medium")
    images, masks = case_inputs(meta)
    tokens = backend.model.object_tokens(images[0], masks[0])
    answer = backend.model.answer(meta["instruct"], [tokens], None, max_new_tokens=4)
    assert len(answer.token_ids) == 4
