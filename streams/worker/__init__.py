"""The suggestion worker: Faust app and agent, processor, models, health, HTTP API, and replays of history."""
