"""`make gpu-check` (`python -m bench.gpu.check`): DALI's GPU batches against the CPU loader's and
ResNet50 trained with AMP fed by each loader, on a CUDA machine; the figures go to docs/gpu.md."""
