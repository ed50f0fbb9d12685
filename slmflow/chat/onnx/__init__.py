"""The onnxruntime-genai generation engine: prompts, rows and step-wise batched decoding."""
