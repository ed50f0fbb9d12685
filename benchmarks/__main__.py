"""Run every benchmark: `python -m benchmarks`. Opt-in and slow: `python -m benchmarks --real-shape` (Phi-3-mini's
shape) and `python -m benchmarks --same-weights --gguf FILE` (onnx-chat against llama.cpp on SmolLM2's weights)."""

import sys

OPT_IN = {"--real-shape": "real_shape", "--same-weights": "same_weights", "--llama-server": "llama_server"}

if sys.argv[1:2] and sys.argv[1] in OPT_IN:
    import importlib

    importlib.import_module(f"benchmarks.{OPT_IN[sys.argv[1]]}").main(sys.argv[2:])
else:
    from benchmarks import batch_score, onnx_chat_speed, pipeline_rerun, serving

    onnx_chat_speed.main()
    pipeline_rerun.main()
    serving.main()
    batch_score.main()
