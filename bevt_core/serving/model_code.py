"""The file MLflow logs as the model's code ("models from code"): loading a registered model runs it
instead of unpickling an object, so a model from the registry executes no pickle."""

from mlflow.models import set_model

from bevt_core.serving.pyfunc import VideoClassifier

set_model(VideoClassifier())
