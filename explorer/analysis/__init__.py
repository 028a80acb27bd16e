"""Which layers are redundant: angular distances, their uncertainty, other metrics."""
