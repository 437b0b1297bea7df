"""Building blocks of the native models: rotary embedding, RMSNorm, fused-projection loading."""
