"""Compiled (numba) kernels of the readers: the zstd byte un-shuffle, bands written into a
batch with non-temporal stores, and the CPU's uint16 -> normalised float32 conversion; numpy's
and torch's passes stand in without numba."""
