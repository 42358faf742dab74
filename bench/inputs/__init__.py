"""What the bench measures on: a SEN12MS tree with the real reference patches in it, its labels,
splits and shard sets (one per codec), generated once under bench/data/ and reused."""
