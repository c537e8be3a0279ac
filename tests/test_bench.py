"""Each bench script runs on its tiny setting (no timing is asserted: numbers live in bench/).

The node benches start a real refer_node and the bench publisher on the tiny random checkpoint,
in this test process's ROS domain. bench_backends' smoke test is in tests/test_export.py, where
it reuses that module's ONNX export (exporting again would cost ~45 s here).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.official_fixtures import REPO_ROOT
from tests.rosutil import ros_env


def run_bench(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=ros_env(),
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def test_bench_model_tiny(tmp_path) -> None:
    out = tmp_path / "model.json"
    run_bench("bench.bench_model", "--preset", "tiny", "--repeats", "1", "--new-tokens", "4",
              "--json", str(out))
    result = json.loads(out.read_text())
    assert result["results"]["decode"]["new_tokens"] == 4
    assert result["results"]["global_encode"]["median_s"] > 0
    assert "cpu" in result["machine"]


def test_bench_history_through_the_node(tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "history.json"
    run_bench("bench.bench_history", "--quick", "--model-dir", str(tiny_ckpt), "--json",
              str(out), "--log-dir", str(tmp_path))
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [r["history_frames"] for r in rows] == [1, 4]
    # a longer history means a longer prompt: 32 region tokens (+ a time stamp) per frame
    assert rows[1]["prompt_tokens"] - rows[0]["prompt_tokens"] >= 3 * 32
    for r in rows:
        assert r["ratio"] > 0 and r["bare_s"]["n"] == 2
    assert "load_avg_1m" in result["machine"]


def test_bench_history_in_process_worker(tmp_path) -> None:
    out = tmp_path / "history_worker.json"
    run_bench("bench.bench_history", "--quick", "--via", "worker", "--json", str(out))
    rows = json.loads(out.read_text())["results"]
    assert [r["history_frames"] for r in rows] == [1, 4] and rows[0]["ratio"] > 0


def test_bench_tokens_tiny(tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "tokens.json"
    run_bench("bench.bench_tokens", "--quick", "--model-dir", str(tiny_ckpt), "--json", str(out))
    rows = {r["scenario"]: r for r in json.loads(out.read_text())["results"]}
    image, clip = rows["image"], rows["clip4_tracked"]
    assert image["lite_object_tokens"] == 32 and clip["lite_object_tokens"] == 4 * 32
    # full PixelRefer adds the frame's visual tokens: one per patch of the 160x120 image
    assert image["full_visual_tokens"]["static"] == 9 * 11  # 120x160 -> 126x154 px
    assert image["full_tokens"]["noisy"] > image["lite_tokens"]
    # the pruner keeps the first frame whole and drops unchanged windows of a static camera
    kept = clip["full_visual_per_frame"]["static"]
    assert kept[0] == clip["full_visual_per_frame"]["unpruned"][0] and kept[1] < kept[0]
    assert clip["flops"]["lite_llm_oci"] > 0 and clip["kv_bytes_bf16"]["lite"] > 0


def test_bench_ingest_through_the_node(tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "ingest.json"
    run_bench("bench.bench_ingest", "--quick", "--model-dir", str(tiny_ckpt), "--json",
              str(out), "--log-dir", str(tmp_path))
    (row,) = json.loads(out.read_text())["results"]
    assert row["objects"] == 2
    assert row["received_hz"]["n"] == 2 and row["received_hz"]["median"] > 0
    assert 0.0 <= row["skipped_share"]["median"] <= 1.0
    assert 0.0 <= row["skipped_share_phase"] <= 1.0


def test_bench_memory_through_the_node(tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "memory.json"
    run_bench("bench.bench_memory", "--quick", "--model-dir", str(tiny_ckpt), "--json",
              str(out), "--log-dir", str(tmp_path))
    result = json.loads(out.read_text())
    assert len(result["samples"]) >= 5
    assert result["results"]["rss_steady"]["median"] > 0
    assert result["results"]["buffer_steady_mib"]["max"] > 0  # the buffer's own accounting


def test_bench_gpu_runs_or_says_why_not(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    run = run_bench("bench.bench_gpu", "--quick", "--json", str(out))
    result = json.loads(out.read_text())
    import torch

    if torch.cuda.is_available():
        assert result["results"]["decode"]["tokens_per_s"] > 0
    else:
        assert "skipped: no CUDA" in run.stdout and result["skipped"] == "no CUDA"


def test_bench_precision_fp32_reproduces_the_official_answers(tmp_path) -> None:
    out = tmp_path / "precision.json"
    run = run_bench("bench.bench_precision", "--device", "cpu", "--dtypes", "float32",
                    "bfloat16", "--json", str(out))
    results = json.loads(out.read_text())["results"]
    fp32 = {k: v for k, v in results.items() if k.startswith("float32 ")}
    assert len(fp32) == 5 and len(results) == 10, sorted(results)
    for case, r in fp32.items():
        assert r["greedy_agree"] == r["greedy_len"] == 16 and r["text_equal"], case
        assert r["tokens_rel_diff"] < 1e-4 and r["logits_rel_diff"] < 1e-5, case
    # bf16 measurably moves the logits (the bench would be blind if it did not)
    assert all(v["logits_rel_diff"] > 1e-3 for k, v in results.items() if "bfloat16" in k)
    assert "image_relation" in run.stdout


def test_bench_region_cost_box(tmp_path) -> None:
    out = tmp_path / "region_cost.json"
    run_bench("bench.bench_region_cost", "--masks", "box24", "--repeats", "1", "--json", str(out))
    (result,) = json.loads(out.read_text())["results"]
    assert result["mask"] == "box24" and result["pixels"] == 576 and result["patches"] == 529
    assert result["encode_s"] > 0


def test_run_all_builds_the_summary(tmp_path) -> None:
    run = run_bench("bench.run_all", "--quick", "--only", "gpu", "--results-dir", str(tmp_path))
    summary = json.loads((tmp_path / "quick" / "summary.json").read_text())
    assert any(row[0].startswith("6. GPU") for row in summary["rows"])
    assert (tmp_path / "quick" / "gpu.json").is_file() and "6. GPU" in run.stdout
