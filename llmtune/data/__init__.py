"""Data: format converters, loading, tokenization and the built-in synthetic data."""
