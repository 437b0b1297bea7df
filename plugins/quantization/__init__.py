"""Built-in quantization methods (AWQ, GPTQ, FP8, ...) as plugins."""
