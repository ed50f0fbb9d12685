"""The server's Prometheus metrics, in a registry of its own (so that tests and several apps never share counts)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Requests by route and status (every status, 499 and 500 included), tokens, timings, queue and batches."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "slmflow_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.prompt_tokens = Counter("slmflow_prompt_tokens", "prompt tokens read", registry=self.registry)
        self.completion_tokens = Counter(
            "slmflow_completion_tokens", "completion tokens generated", registry=self.registry
        )
        self.ttft = Histogram(
            "slmflow_time_to_first_token_seconds",
            "from submission to the first generated text",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "slmflow_request_latency_seconds",
            "chat completion requests, to the last byte",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cancelled = Counter(
            "slmflow_cancelled_rows",
            "rows stopped because their client went away, while queued or generating",
            registry=self.registry,
        )
        self.queue_depth = Gauge("slmflow_queue_depth", "requests waiting for a batch", registry=self.registry)
        self.swaps = Counter(
            "slmflow_model_swaps",
            "a followed alias moved and its route now answers with the new version, by what noticed the move",
            ["route", "trigger"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "slmflow_webhook_deliveries",
            "MLflow webhook deliveries: accepted (an alias this server follows), ignored, refused (HTTP 401)",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "slmflow_batch_size", "rows generated together", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
