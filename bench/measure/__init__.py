"""Measuring: timing primitives (a repeat, its statistics, CPU pinning) and `Results`, what one
run measured, round by round."""
