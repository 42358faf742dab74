"""One training run: the loop, its steps and evaluation passes, checkpoints and resume, the
run folder, progress, signals, the device and torchrun."""
