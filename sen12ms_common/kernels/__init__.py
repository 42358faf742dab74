"""Compiled (numba) kernels of the readers: the zstd byte un-shuffle and bands written into
a batch with non-temporal stores; numpy's passes stand in without numba."""
