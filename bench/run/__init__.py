"""One bench run: its configuration (`python -m bench`'s options) and the run itself, every case
interleaved by round into one `Results`."""
