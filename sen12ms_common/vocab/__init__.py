"""The words both sides share: bands and input sets, IGBP and DFC2020 classes and label
rules, patch, scene and split names, the official lists, stored arrays -> model input."""
