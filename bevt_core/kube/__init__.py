"""Kubernetes side of the pipeline: container images, PyTorchJob rendering and launching, the pipeline CLI.

Everything here imports kubernetes / kubeflow-training / kfp lazily or only in its own module,
so the stages in :mod:`bevt_core.stages` never depend on a cluster library.
"""
