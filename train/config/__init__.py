"""What a run is: `TrainConfig` and its arguments-file form (the original's `key: value`
lines included)."""
