"""The SEN12MS trainer: streams shards into the original toolbox's models and scores them with
the original's metric set.

`python -m train` trains, `python -m train.evaluate` evaluates a checkpoint (ours or the
original's). Modules: `models` (the model registry), `metrics` (the metric set),
`checkpoint` (save / load / resume, original formats), `argsfile` (the original's arguments
file), `run` (a training run: epochs, validation, checkpoints, test), `tasks` (what is specific to
the learning task), `data` (webdataset and DALI loaders), `config`.
"""
