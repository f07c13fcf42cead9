"""The auto-reconnecting Python client."""
