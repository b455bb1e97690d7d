"""Session tokens handed out: reuse, coalescing, and the sealed store shared through Redis."""
