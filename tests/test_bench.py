"""Each bench script runs on its tiny setting (no timing is asserted: numbers live in bench/)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_bench_model_tiny(tmp_path) -> None:
    out = tmp_path / "model.json"
    run = subprocess.run([sys.executable, "-m", "bench.bench_model", "--preset", "tiny",
                          "--repeats", "1", "--new-tokens", "4", "--json", str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["results"]["decode"]["new_tokens"] == 4
    assert result["results"]["global_encode"]["median_s"] > 0
    assert "cpu" in result["machine"]
