"""Analysis of compressed networks: the empirical NTK and kernel metrics."""
