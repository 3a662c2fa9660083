"""msgspec schemas of the HTTP API: one module per concern."""
