"""GeoTIFF triplets -> sharded WebDataset, plus the sample dataset, labels, splits and checks."""
