"""The shard sample format: members and their codecs, the manifest, checksums, the one tar
reader, mapped shards and reusable buffers."""
