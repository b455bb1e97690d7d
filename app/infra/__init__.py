"""Infrastructure that several families use: the optional Redis shared by replicas
(`redis_state`) and the per-user rate limits kept in it or in process (`rate_limits`)."""
