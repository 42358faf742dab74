"""The original's label and split files and our JSON / text twins: readers that can only
build the expected data, and a restricted pickle interpreter."""
