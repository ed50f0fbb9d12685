"""The OpenAI-compatible server: the FastAPI app (`app`) and batching across requests (`batcher`)."""
