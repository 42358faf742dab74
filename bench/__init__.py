"""`make bench` (`python -m bench`): the side-by-side figures of docs/benchmarks.md.

Modules, one job each:
- `dataset`     the bench dataset (SEN12MS tree with the real patches, labels, splits, shard sets);
- `measure`     timing of one repeat, median / min / max, pinning to one CPU;
- `loaders`     the original's way, our webdataset loader, the codec limits;
- `dali`, `daliworker`   the DALI rows, in a process of their own;
- `conversion`, `training`, `s3rows`   the other blocks of rows;
- `run`         one run, interleaved by round; `results` what it measured; `report` table, plot, text.
"""
