"""Market data: messages and depth views (sans-IO), the trio notifier, the client."""
