"""`convert shards` and its checks: scan -> plan -> encode -> write -> manifest; the output
folder, its lock, resume, parts, `merge-manifest`, `verify`."""
