"""Getting a model: sources (builtin, local folder, hub), the ONNX GenAI build and the local cache."""
