"""`postmodern collect`: shopper events one by one over HTTP, acknowledged once durable, into the raw log once.

    POST /events   {"events": [{"event_id": ..., "session_id_hash": ..., "event_type": ..., ...}, ...]}
                   -> 200 {"accepted": n, "duplicates": n, "rejected": [{"index", "event_id", "reason"}]}
                   -> 429 with Retry-After while the stage is full (nothing of the request was kept)
    GET  /ping     the stage's state
    GET  /metrics  Prometheus: events by outcome, staged, loaded, loads by outcome, lag

A service of its own rather than a route of the model server: an fsync per group of requests and the loads of
micro-batches stay off the ranking path's two cores, and each restarts (a crash included) without the other.
"""
