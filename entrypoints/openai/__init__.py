"""The OpenAI-compatible HTTP server: protocol, request handling, the FastAPI app."""
