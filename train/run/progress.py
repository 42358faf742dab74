"""The trainer's progress reporting: the shared implementation in sen12ms_common.progress, which
the converter uses too (convert and train never import each other)."""

from sen12ms_common.progress import (DEFAULT_INTERVAL, NO_PROGRESS, Plan, ProgressMeter, ProgressOptions,  # noqa: F401
                                     duration, progress_options)

__all__ = ["ProgressOptions", "ProgressMeter", "Plan", "duration", "DEFAULT_INTERVAL", "NO_PROGRESS", "progress_options"]
