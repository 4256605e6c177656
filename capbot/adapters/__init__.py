"""One external library each, behind a small interface."""
