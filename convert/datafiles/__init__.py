"""`convert labels` and `convert splits`: the original toolbox's label and split files,
derived from a tree."""
