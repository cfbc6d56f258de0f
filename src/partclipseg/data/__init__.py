"""Benchmark datasets: readers for the published layouts, evaluation samples, synthetic generators."""
