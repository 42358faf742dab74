"""From `Results` to docs/benchmarks.md: the table's rows, the headline the README quotes, the
page around them and the plot of the loader rows."""
