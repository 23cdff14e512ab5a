"""SQLite exam cache."""
