"""What is kept: the SQLite run store and the measurements cached in it."""
