"""Frozen text encoders behind one interface."""

from .encoders import MiniLMTextEncoder, TextEncoder

__all__ = ["TextEncoder", "MiniLMTextEncoder"]
