"""Run every benchmark: `python -m benchmarks`; the opt-in Phi-3-mini shape one: `python -m benchmarks --real-shape`."""

import sys

if sys.argv[1:2] == ["--real-shape"]:
    from benchmarks import real_shape

    real_shape.main(sys.argv[2:])
else:
    from benchmarks import batch_score, onnx_chat_speed, pipeline_rerun, serving

    onnx_chat_speed.main()
    pipeline_rerun.main()
    serving.main()
    batch_score.main()
