"""A bounded HTTP server for the status API and the processor (connections, idle time, routes)."""
