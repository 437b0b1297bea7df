"""The core: hook specs, plugin interfaces, configs, engine, scheduler and KV cache."""
