"""`make bench` (`python -m bench`): the side-by-side figures of docs/benchmarks.md.

The packages, in the order the data flows: `inputs` (the bench dataset and its shard sets),
`measure` (timing primitives and what a run measured), `originals` (the original toolbox's and the
DFC2020 baseline's data paths, the reference every row is compared with), `cases` (what is
measured: one repeat of each row), `run` (one run: every case, interleaved by round), `report`
(the table, the headline and docs/benchmarks.md); `gpu` is `make gpu-check`, apart."""
