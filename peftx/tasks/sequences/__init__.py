"""Sequence-classification tasks read from the user's own files."""
