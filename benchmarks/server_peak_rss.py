"""Peak RSS of `python -m slmflow.serve` on one onnx-chat model folder, to size the Kubernetes Deployment.

The folder is logged as an onnx-chat model in a throw-away sqlite store, served on loopback, and sent
waves of concurrent chat requests (1, then `--clients` at once, each asking for `--max-tokens`).
The server's RSS is sampled from /proc while the waves run; VmHWM (the kernel's peak) is read at the
end of each wave. The KV cache is allocated per generator group for its rows' prompt + max_tokens,
and up to `--max-groups` groups of `--max-batch-size` rows generate at once, each with its own cache:
so one server is measured per `--max-groups` value, with enough clients to fill every group. The
growth between waves, per token in flight, extrapolates to larger budgets. Bounded: two waves a server.

    python -m benchmarks.server_peak_rss --onnx-dir PATH [--clients 32] [--max-tokens 256] [--max-groups 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.report import write_report
from testkit.processes import free_port, launched_server

MIB = 1024 * 1024


def log_model(onnx_dir: Path, store: Path) -> str:
    import mlflow

    from slmflow.config import GenerationConfig, RuntimeConfig
    from slmflow.flavors.onnx_chat import log_onnx_chat_model

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    # Artifacts in the throw-away folder too (a new store's default is ./mlruns in the working directory).
    experiment = mlflow.create_experiment("server-peak-rss", artifact_location=(store / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        return log_onnx_chat_model(onnx_dir, GenerationConfig(), RuntimeConfig())


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def ask(port: int, max_tokens: int, index: int) -> int:
    question = f"Write a long story about a lighthouse keeper, number {index}, and the storms of each season."
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "min_tokens": max_tokens}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return int(json.loads(response.read())["usage"]["total_tokens"])


def wave(port: int, pid: int, clients: int, max_tokens: int) -> dict[str, float]:
    """`clients` requests at once; the RSS sampled every 50 ms while they run."""
    peak = [status_kib(pid, "VmRSS")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(status_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(lambda i: ask(port, max_tokens, i), range(clients)))
    done.set()
    sampler.join()
    return {
        "clients": clients,
        "max_tokens": max_tokens,
        "tokens_in_flight": tokens,
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mib": round(max(peak) / 1024, 1),
        "vm_hwm_mib": round(status_kib(pid, "VmHWM") / 1024, 1),
    }


def measure_server(model_uri: str, store: Path, args: argparse.Namespace, max_groups: int) -> dict:
    """One server with `max_groups`: the model loaded, then one request, then `args.clients` at once."""
    port = free_port()
    command = [sys.executable, "-m", "slmflow.serve", "--model-uri", model_uri, "--port", str(port)]
    command += ["--max-batch-size", str(args.max_batch_size), "--max-groups", str(max_groups)]
    command += ["--max-queue", str(max(64, args.clients))]
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    log = store / f"server-{max_groups}.log"
    with launched_server(command, f"http://127.0.0.1:{port}/ready", log, **env) as server:
        loaded = status_kib(server.pid, "VmRSS") / 1024
        one, many = wave(port, server.pid, 1, args.max_tokens), wave(port, server.pid, args.clients, args.max_tokens)
    extra_tokens = many["tokens_in_flight"] - one["tokens_in_flight"]
    per_1k_tokens = (many["vm_hwm_mib"] - one["vm_hwm_mib"]) / extra_tokens * 1000 if extra_tokens > 0 else None
    return {
        "max_groups": max_groups,
        "max_batch_size": args.max_batch_size,
        "loaded_rss_mib": round(loaded, 1),
        "waves": [one, many],
        "mib_per_1k_tokens_in_flight": round(per_1k_tokens, 2) if per_1k_tokens is not None else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-groups", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--label", default="loaded machine (2 cores shared with other jobs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder)
        model_uri = log_model(args.onnx_dir.resolve(), store)
        servers = [measure_server(model_uri, store, args, groups) for groups in args.max_groups]
    result = {"model": args.onnx_dir.name, "label": args.label, "host_cpus": os.cpu_count(), "servers": servers}
    table = "\n".join(
        [
            f"Server peak RSS, {args.onnx_dir.name}, {args.label}, batches of up to {args.max_batch_size} rows.",
            "",
            "| max_groups | model loaded (MiB) | clients | max_tokens | tokens in flight | peak RSS (MiB) "
            "| VmHWM (MiB) | seconds | growth per 1k tokens in flight (MiB) |",
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {server['max_groups']} | {server['loaded_rss_mib']} | {w['clients']} | {w['max_tokens']} "
                f"| {w['tokens_in_flight']} | {w['peak_rss_mib']} | {w['vm_hwm_mib']} | {w['seconds']} "
                f"| {server['mib_per_1k_tokens_in_flight'] if w is server['waves'][-1] else ''} |"
                for server in servers
                for w in server["waves"]
            ),
        ]
    )
    write_report("server-peak-rss", result, table)


if __name__ == "__main__":
    main()
