"""KFP v2 components: thin wrappers, one per stage, each building the stage's typed config from its
inputs and calling the same ``bevt_core.stages`` function the CLI calls. Images come from
``bevt_core.images`` (BEVT_IMAGE_REGISTRY / BEVT_IMAGE_TAG). The images carry kfp, so
nothing is pip-installed when a step starts.
"""
