"""Native model implementations (Llama family), registered through the model-architecture hook."""
