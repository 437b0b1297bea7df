"""Entry points: the ``fw`` command line (and later the offline LLM API and the OpenAI server)."""
