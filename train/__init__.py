"""The SEN12MS trainer: streams shards into the original toolbox's models and scores them with
the original's metric set.

`python -m train` trains, `python -m train.evaluate` evaluates a checkpoint (ours or the
original's). Modules: `models` (the model registry), `metrics` (the metric set),
`checkpoint` (save / load / resume, original formats), `argsfile` (the original's arguments
file), `loop` (train / validate / test), `data` (webdataset and DALI loaders), `config`.
"""
