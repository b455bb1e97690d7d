"""Live capture (BROKER_CAPTURE_LIVE=on): the rest of VideoDB's capture backend.

The broker receives the sessions' webhooks (`webhooks.py`), believes only what VideoDB says
when asked again, starts the operator's AI steps once per session on one VideoDB WebSocket
(`pipelines.py`, `videodb_socket.py`), and relays what arrives, reduced (`events.py`), into
each session's bounded event log (`event_log.py`: in process, or a Redis stream any replica
reads), which the owner's feed replays and follows.
"""
