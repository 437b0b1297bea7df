"""Attention backends in plain torch; platforms return theirs from ``Platform.attention_backend()``."""
