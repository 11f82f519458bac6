"""Data: embedded toy data, real-layout readers, datasets and transforms."""
