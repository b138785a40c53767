"""The runtime: the stream processor and everything around it (see docs/architecture.md for the layers)."""
