"""HTTP routers: thin, they validate, pick the service and choose JSON or SSE."""
