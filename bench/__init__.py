"""`make bench` (`python -m bench`): the side-by-side figures of docs/benchmarks.md."""
