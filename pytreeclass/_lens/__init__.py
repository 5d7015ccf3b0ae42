"""Lenses: the single-path walk, the selection engine and compiled updates (see README.md)."""
