"""Benchmarks that print their figures as ratios against the raw tools, measured in the same run."""
