"""Using a finetuned recognizer: predictions on video files (``bevt predict``) and the MLflow pyfunc
model that the registry holds and ``mlflow models serve`` serves. Both go through
:class:`bevt_core.serving.predictor.Predictor`."""
