"""Built-in platforms: cpu (fw's C kernels, oneDNN pre-packed bf16 weights) and cuda (Triton attention)."""
