"""The Post-Modern Stack: session-based recommendation from a warehouse log to a real-time endpoint."""

__version__ = "0.1.0"
