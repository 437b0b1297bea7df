"""Built-in weight loaders (safetensors, pt, dummy, gguf) and model sources (local, hf, modelscope, the default model)."""
