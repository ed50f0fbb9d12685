"""Models-from-code entry for the `onnx-chat` model: MLflow runs this file to build the model."""

import mlflow

from slmflow.chat.pyfunc import OnnxChatModel

mlflow.models.set_model(OnnxChatModel())
