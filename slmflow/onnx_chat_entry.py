"""Models-from-code entry for the ONNX chat model: MLflow runs this file to build the model."""

import mlflow

from slmflow.onnx_chat import OnnxChatModel

mlflow.models.set_model(OnnxChatModel())
