"""The chat model: the typed request, the response shapes, the ONNX GenAI engine and its pyfunc."""
