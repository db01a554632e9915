"""ragtune."""
