"""End-to-end latency through Triton (text in -> embeddings/logits out, tokenization on the server):
float vs the INT8 variant at batch 1, sequential and under concurrent load.

Usage: python bench/triton_latency.py RUN_DIR [--variant int8-mse] [--requests 200] [--concurrency 8]
       [--protocol grpc|http] [--texts 256] [--out FILE]

Serves RUN_DIR/triton (written by the recipe's deploy section or `quantize deploy RUN_DIR`; generated
into a temp folder when missing) with the bundled tritonserver on 127.0.0.1, CPU models only (the
Python backend running ONNX Runtime). Texts are the run's own evaluation split, so lengths are real.
Sequential: one request at a time, float and INT8 alternating on the same text (drift cancels out).
Concurrent: N client threads, each sending single-text requests back to back; dynamic batching on the
server groups them (the average batch size comes from Triton's statistics). Writes
RUN_DIR/bench_triton_latency.json (or --out) and prints a table. Client and server share this
machine's cores; numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tritonserver launcher lives with the tests
from deploy.triton_server import TritonServer  # noqa: E402

from quant_workbench.config.recipe import DeploySpec, load_recipe
from quant_workbench.core.artifacts import write_json
from quant_workbench.core.machine import hardware
from quant_workbench.deploy import deploy_run
from quant_workbench.deploy.triton import Repository
from quant_workbench.pipeline.run import versions
from quant_workbench.report.markdown import update_report


def _client(protocol: str, url: str) -> tuple[Any, Any]:
    if protocol == "grpc":
        import tritonclient.grpc as mod
    else:
        import tritonclient.http as mod  # type: ignore[no-redef]
    return mod, mod.InferenceServerClient(url)


def _infer(mod: Any, client: Any, model: str, text: str, output: str) -> np.ndarray:
    inp = mod.InferInput("text", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=np.object_))
    return np.asarray(client.infer(model, [inp], outputs=[mod.InferRequestedOutput(output)]).as_numpy(output))


def _stats(ms: list[float], wall_s: float | None = None) -> dict[str, float]:
    a = np.asarray(ms)
    out = {
        "requests": len(ms),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }
    if wall_s:
        out["throughput_req_per_s"] = len(ms) / wall_s
    return {k: round(v, 3) for k, v in out.items()}


def _model_counts(server: TritonServer, model: str) -> tuple[int, int]:
    import tritonclient.http as th

    c = th.InferenceServerClient(server.http_url)
    try:
        s = c.get_inference_statistics(model)["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])
    finally:
        c.close()


def _texts(run_dir: Path, n: int) -> list[str]:
    from quant_workbench.data.splits import load_splits

    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    splits = load_splits(recipe.data)
    texts = [t if isinstance(t, str) else f"{t[0]} {t[1]}" for t in splits.evaluation.texts[:n]]
    return [t for t in texts if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variant", default=None, help="INT8 variant (default: the run's best)")
    ap.add_argument("--requests", type=int, default=200, help="sequential requests per variant")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--concurrent-requests", type=int, default=400, help="requests per variant under load")
    ap.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    run_dir: Path = args.run_dir
    repo_dir = run_dir / "triton"
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if not (repo_dir / "repository.json").is_file():
        tmp = tempfile.TemporaryDirectory(prefix="qwb-bench-repo-")
        recipe = load_recipe(run_dir / "recipe.resolved.yaml")
        spec = recipe.deploy or DeploySpec()
        spec = spec.model_copy(update={"targets": ["python-onnxruntime"]})
        deploy_run(run_dir, Path(tmp.name) / "triton", recipe=recipe.model_copy(update={"deploy": spec}), build_engines=False)
        repo_dir = Path(tmp.name) / "triton"
    repo = Repository.load(repo_dir)
    int8 = args.variant or repo.best_variant
    if int8 is None:
        raise SystemExit("the run has no best variant; pass --variant")
    variants = ["float", int8]
    ensembles = {v: repo.ensemble(v) for v in variants}
    output = next(m for m in repo.models if m.variant == int8).outputs[0]["name"]
    load = [repo.tokenizer] + [m for v in variants for m in (f"{v}-cpu", ensembles[v])]
    texts = _texts(run_dir, args.texts)
    print(f"{len(texts)} texts from the evaluation split; models {load}")

    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "repository": str(repo_dir),
        "protocol": args.protocol,
        "hardware": hardware(),
        "versions": versions(),
        "texts": {"count": len(texts), "mean_chars": round(statistics.mean(len(t) for t in texts), 1)},
        "variants": {},
    }
    with TritonServer(repo_dir, load) as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        mod, client = _client(args.protocol, url)
        for v in variants:
            for i in range(args.warmup):
                _infer(mod, client, ensembles[v], texts[i % len(texts)], output)

        # batch 1, sequential, interleaved
        seq: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(args.requests):
            text = texts[i % len(texts)]
            for v in variants if i % 2 == 0 else variants[::-1]:
                t0 = time.perf_counter()
                _infer(mod, client, ensembles[v], text, output)
                seq[v].append((time.perf_counter() - t0) * 1000)
        client.close()

        # concurrent single-text requests; variants alternate in two rounds each
        conc: dict[str, list[float]] = {v: [] for v in variants}
        walls: dict[str, float] = {v: 0.0 for v in variants}
        batches: dict[str, list[int]] = {v: [0, 0] for v in variants}
        per_round = max(1, args.concurrent_requests // 2)
        for rnd in range(2):
            for v in variants if rnd == 0 else variants[::-1]:
                counter = iter(range(per_round))
                lock = threading.Lock()
                lat: list[float] = []

                def worker(model: str = ensembles[v], lat: list[float] = lat, counter: Any = counter, lock: threading.Lock = lock) -> None:
                    wmod, wclient = _client(args.protocol, url)
                    try:
                        while True:
                            with lock:
                                j = next(counter, None)
                            if j is None:
                                return
                            t0 = time.perf_counter()
                            _infer(wmod, wclient, model, texts[j % len(texts)], output)
                            ms = (time.perf_counter() - t0) * 1000
                            with lock:
                                lat.append(ms)
                    finally:
                        wclient.close()

                before = _model_counts(server, f"{v}-cpu")
                threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                walls[v] += time.perf_counter() - t0
                after = _model_counts(server, f"{v}-cpu")
                conc[v] += lat
                batches[v][0] += after[0] - before[0]
                batches[v][1] += after[1] - before[1]

    for v in variants:
        result["variants"][v] = {
            "ensemble": ensembles[v],
            "sequential_batch1": _stats(seq[v]),
            "concurrent": {
                "clients": args.concurrency,
                **_stats(conc[v], walls[v]),
                "mean_server_batch": round(batches[v][0] / max(batches[v][1], 1), 2),
            },
        }
    f, q = result["variants"]["float"], result["variants"][int8]
    result["int8_variant"] = int8
    result["speedup_int8_vs_float"] = {
        "sequential_p50": round(f["sequential_batch1"]["p50_ms"] / q["sequential_batch1"]["p50_ms"], 3),
        "concurrent_p50": round(f["concurrent"]["p50_ms"] / q["concurrent"]["p50_ms"], 3),
        "concurrent_throughput": round(q["concurrent"]["throughput_req_per_s"] / f["concurrent"]["throughput_req_per_s"], 3),
    }
    out = args.out or run_dir / "bench_triton_latency.json"
    write_json(out, result)
    if (run_dir / "report.json").is_file():
        update_report(run_dir, "triton_benchmark", result)
        print(f"report updated: {run_dir / 'report.md'}")
    print(f"\n{'variant':<16}{'seq p50 ms':>12}{'seq p90 ms':>12}{'conc p50 ms':>13}{'conc p90 ms':>13}{'req/s':>9}{'batch':>7}")
    for v in variants:
        s, c = result["variants"][v]["sequential_batch1"], result["variants"][v]["concurrent"]
        print(f"{v:<16}{s['p50_ms']:>12.2f}{s['p90_ms']:>12.2f}{c['p50_ms']:>13.2f}{c['p90_ms']:>13.2f}{c['throughput_req_per_s']:>9.1f}{c['mean_server_batch']:>7.2f}")
    print(f"INT8 vs float: {result['speedup_int8_vs_float']}")
    print(f"written: {out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
