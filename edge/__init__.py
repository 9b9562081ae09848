"""Ping'an Edge: the village station unit daemon."""

__version__ = "0.1.0"
