"""Run every benchmark: `python -m benchmarks`."""

from benchmarks import onnx_chat_speed, pipeline_rerun

onnx_chat_speed.main()
pipeline_rerun.main()
