"""The product database and the sink that writes TagSuggestions events into it (PostgreSQL or SQLite)."""
