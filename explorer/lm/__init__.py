"""Model access: loading, streaming, text data, blocks, generation."""
