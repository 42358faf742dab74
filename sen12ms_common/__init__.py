"""The SEN12MS vocabulary shared by `convert` and `train`.

Numpy only: importing this package never imports torch, rasterio or an I/O framework
(`storage` imports fsspec lazily, when a function of it is called).
"""

__version__ = "0.1.0"
