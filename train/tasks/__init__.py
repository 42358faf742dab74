"""The learning tasks: scene classification and segmentation, their losses, metrics, scores,
report files and figures."""
