"""Run every benchmark: `python -m benchmarks`."""

from benchmarks import batch_score, onnx_chat_speed, pipeline_rerun, serving

onnx_chat_speed.main()
pipeline_rerun.main()
serving.main()
batch_score.main()
