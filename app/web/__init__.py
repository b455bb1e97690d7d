"""The HTTP layer: endpoints, problem+json, request context, CORS and the server protocol."""
