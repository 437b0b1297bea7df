"""The model runner (flat batch -> attention metadata -> model -> logits) and the sampler."""
