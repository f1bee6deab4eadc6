"""Preparing a stage's data: reading its mixture (sampling rules, every source), storing the samples on disk,
measuring their lengths in parallel worker processes, and the cache that keeps checks and lengths between runs."""
