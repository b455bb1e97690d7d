"""Capture sessions for the authenticated user, created with a token, read by their owner."""
