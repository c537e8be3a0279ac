"""Every bench of issue #6 in one run, side by side, and one summary table with the ratios.

    python -m bench.run_all --quick            # tiny settings, ~1 min (what a smoke check needs)
    python -m bench.run_all                    # full: node model + 2B shapes, ~1 h, 2 cores
    python -m bench.run_all --skip-2b --only history tokens

Each bench runs in its own process (one model in memory at a time, nothing leaks between them)
and writes its JSON to bench/results/; this script then prints the summary and writes
bench/results/summary.json (quick runs: everything under bench/results/quick/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, load_avg, save_json, table

PAPER_FLOPS = (11.15, 0.11)  # TFLOPs, LLM+OCI, 2B, HC-STVG 20 frames (full -> Lite)


def steps(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(name, module, argv) of every bench in this run."""
    model = ["--model-dir", args.model_dir] if args.model_dir else []
    q = ["--quick"] if args.quick else []
    out = [
        ("history", "bench.bench_history", [*model, *q]),
        ("tokens", "bench.bench_tokens", [*model, *q,
                                         *(["--measure-layers", "0"] if args.skip_2b else [])]),
        ("ingest", "bench.bench_ingest", [*model, *q]),
        ("memory", "bench.bench_memory", [*model, *q]),
        ("backends", "bench.bench_backends", [*([args.model_dir] if args.model_dir else []), *q]),
        ("gpu", "bench.bench_gpu", q),
    ]
    if not args.quick and not args.skip_2b:  # the few 2B runs (minutes each on this CPU)
        out += [
            ("history_2b", "bench.bench_history", ["--via", "worker", "--preset", "2b",
                                                   "--llm-layers", "4", "--repeats", "7",
                                                   "--new-tokens", "8"]),
            ("ingest_2b", "bench.bench_ingest", ["--preset", "2b", "--measure-objects", "1",
                                                 "--seconds", "450", "--windows", "3",
                                                 "--warmup", "30"]),
        ]
    if args.only:
        out = [s for s in out if s[0] in args.only]
    return out


def results_dir(args: argparse.Namespace) -> Path:
    base = Path(args.results_dir)
    return base / "quick" if args.quick else base


def run(args: argparse.Namespace) -> dict[str, dict]:
    folder = results_dir(args)
    done: dict[str, dict] = {}
    for name, module, argv in steps(args):
        path = folder / f"{name}.json"
        cmd = [sys.executable, "-m", module, *argv, "--json", str(path)]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd)
        elapsed = time.monotonic() - t0
        if rc == 0 and path.is_file():
            done[name] = json.loads(path.read_text()) | {"wall_s": elapsed}
        else:
            done[name] = {"failed": rc, "wall_s": elapsed}
            print(f"=== {name} FAILED (exit {rc})", flush=True)
    return done


# ---------------------------------------------------------------------------------- summary

def summary_rows(done: dict[str, dict]) -> list[list[str]]:
    rows: list[list[str]] = []
    for key in ("history", "history_2b"):
        r = done.get(key, {})
        for h in r.get("results", []):
            rows.append([f"1. describe / bare LLM, {h['history_frames']} frame(s)",
                         f"{h['ratio']:.3f} (paired {_fmt(h['ratio_paired'])})", "<= 1.15",
                         r.get("model", "")])
    for r in done.get("tokens", {}).get("results", []):
        f = r["flops"]
        vit = (f["full_llm_proj_noisy"] + f["full_vit"]) / (f["lite_llm_oci"] + f["lite_vit"])
        rows.append([f"2. {r['scenario']}: LLM tokens Lite -> full (noisy cam)",
                     f"{r['lite_tokens']} -> {r['full_tokens']['noisy']} "
                     f"({r['full_tokens']['noisy'] / r['lite_tokens']:.1f}x)", "",
                     f"masked frames {len(r['masked_frames'])} of {r['frames']}"])
        rows.append([f"2. {r['scenario']}: FLOPs full/Lite, no ViT / with ViT",
                     f"{f['full_llm_proj_noisy'] / f['lite_llm_oci']:.1f}x / "
                     f"{vit:.1f}x",
                     f"paper {PAPER_FLOPS[0] / PAPER_FLOPS[1]:.0f}x (no ViT)",
                     f"Lite {f['lite_llm_oci'] / 1e12:.3g} T, full "
                     f"{f['full_llm_proj_noisy'] / 1e12:.3g} T"])
        for m, p in r["prefill_s"].items():
            rows.append([f"2. {r['scenario']}: prefill full/Lite, {m}",
                         f"{p['full_noisy']['median'] / p['lite']['median']:.1f}x",
                         "paper 1.21x (s/item, A100)",
                         f"Lite {p['lite']['median'] * 1e3:.3g} ms"
                         + (" (est.)" if p["estimated"] else "")])
    for key in ("ingest", "ingest_2b"):
        r = done.get(key, {})
        for x in r.get("results", []):
            measured = "ingested_hz" in x
            val = (f"{_fmt(x['ingested_hz'])} Hz, skipped {_fmt(x['skipped_share'], 100)} %"
                   if measured else "not run")
            pred = (f"predicted {x['predicted_ingested_hz']:.3g} Hz"
                    if "predicted_ingested_hz" in x else "")
            rows.append([f"3. ingestion, {x['objects']} object(s)", val,
                         f"{r.get('rate_hz', 30):g} Hz camera", f"{r.get('model', '')} {pred}"])
    m = done.get("memory", {}).get("results")
    if m:
        rows.append(["4. node RSS slope (steady part)",
                     f"{m['rss_slope_mib_per_min']:+.2f} ± {m['rss_slope_stderr']:.2f} MiB/min",
                     "flat", f"RSS {_fmt(m['rss_steady'])} MiB, buffer "
                     f"{_fmt(m['buffer_steady_mib'])} MiB"])
    for stage, r in done.get("backends", {}).get("results", {}).items():
        rows.append([f"5. torch / onnxruntime, {stage}", f"{r['torch_over_ort']:.2f}x", "",
                     f"torch {r['torch']['median_s'] * 1e3:.3g} ms"])
    g = done.get("gpu", {})
    if g.get("skipped"):
        rows.append(["6. GPU", f"skipped: {g['skipped']}", "", ""])
    elif g.get("results"):
        d = g["results"]["decode"]
        rows.append(["6. GPU decode tokens/s vs bandwidth bound",
                     f"{d['tokens_per_s']:.1f} of {d['bound_measured_bw']:.1f}", "", g["gpu"]])
    for name, r in done.items():
        if "failed" in r:
            rows.append([f"{name}", f"FAILED (exit {r['failed']})", "", ""])
    return rows


def _fmt(s: dict, scale: float = 1.0) -> str:
    return f"{s['median'] * scale:.3g} ({s['min'] * scale:.3g}–{s['max'] * scale:.3g})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--skip-2b", action="store_true")
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--summary-only", action="store_true",
                   help="rebuild the summary from the JSON files already there")
    args = p.parse_args(argv)
    load_before = load_avg()
    if args.summary_only:
        folder = results_dir(args)
        done = {n: json.loads((folder / f"{n}.json").read_text()) for n, _, _ in steps(args)
                if (folder / f"{n}.json").is_file()}
    else:
        done = run(args)
    rows = summary_rows(done)
    print("\n" + table(["figure", "measured (median, min–max)", "target / anchor", "notes"],
                       rows))
    save_json(str(results_dir(args) / "summary.json"), {
        "bench": "run_all", "quick": args.quick, "load_avg_before": load_before,
        "rows": rows, "wall_s": {n: r.get("wall_s") for n, r in done.items()}})
    return 1 if any("failed" in r for r in done.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
