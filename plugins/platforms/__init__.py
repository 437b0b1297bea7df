"""Built-in platforms: cpu and cuda."""
