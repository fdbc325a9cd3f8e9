"""Helpers for testing code that uses container_manager: factories and the fake executor."""
