"""`convert overview`: class histograms, the scene map and an HTML page of a GeoTIFF tree or
a shard set."""
