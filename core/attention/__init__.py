"""Attention backends. The platform names which one the model runner builds."""
