"""Use cases and loops; adapters arrive as constructor arguments."""
