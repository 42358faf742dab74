"""The SEN12MS trainer: streams shards into the original toolbox's models and scores them with
the original's metric set."""
