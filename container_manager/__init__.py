"""container_manager: run each job in its own container, record its whole life in Django."""

__version__ = "0.1.0"
