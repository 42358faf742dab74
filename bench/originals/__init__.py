"""The baseline ways, re-implemented as their code does it: the original toolbox's (rasterio per
sample, classification) and the DFC2020 baseline's (image + mask); the reference the loaders are
measured and checked against."""
