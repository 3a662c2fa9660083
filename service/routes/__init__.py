"""Route handlers: thin controllers, one module per concern."""
