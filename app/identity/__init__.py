"""Who is asking: credentials from the request, verified against the identity provider's keys."""
