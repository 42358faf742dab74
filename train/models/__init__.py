"""The model registry by task: the original toolbox's classification networks and the
segmentation networks."""
