"""The OpenAI-compatible server as a real process for tests: starting it, its clients, metrics and raw sockets."""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import openai
import requests
from mlflow.tracking import MlflowClient

from testkit.processes import free_port, launched_server

CAPITALS = {"Spain": "Madrid", "Kenya": "Nairobi", "Peru": "Lima", "Japan": "Tokyo"}


@dataclass(frozen=True)
class Server:
    base: str
    log: Path
    name: str
    api_key: str = "unused"

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=api_key or self.api_key, max_retries=0, timeout=120)

    def metrics(self) -> str:
        return requests.get(f"{self.base}/metrics", timeout=30).text

    def connect(self, timeout: float = 60) -> socket.socket:
        """A raw connection, for clients that misbehave at the HTTP level."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def read_until_closed(connection: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends before it closes the connection (a reply may come in several packets)."""
    received = b""
    while len(received) < limit and (piece := connection.recv(65536)):
        received += piece
    return received


def question(country: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of {country}?"}]


def answer(country: str) -> str:
    return f"The capital of {country} is {CAPITALS[country]}."


def champion(model_uri: str, name: str) -> str:
    version = mlflow.register_model(model_uri, name)
    MlflowClient().set_registered_model_alias(name, "champion", version.version)
    return f"models:/{name}@champion"


def serve(uri: str, name: str, log: Path, *options: str, api_key: str = "unused", **env: str):
    """(the launched process context, its Server) for `python -m slmflow.serve` on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "slmflow.serve", "--model-uri", uri, "--port", str(port), *options]
    return launched_server(command, f"http://127.0.0.1:{port}/ready", log, **env), Server(
        f"http://127.0.0.1:{port}", log, name, api_key
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + label_text + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def requests_counted(server: Server, status: int) -> float:
    return metric_value(server.metrics(), "slmflow_requests_total", route="/v1/chat/completions", status=str(status))


def closed_by_server(connection: socket.socket) -> bool:
    """Whether the server closes this connection (an empty read) before the socket's timeout."""
    try:
        return connection.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
