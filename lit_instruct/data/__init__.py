"""Reading and validating records, prompt rendering, batching, and one data module per kind of data."""
