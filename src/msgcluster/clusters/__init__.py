"""Message clusters: fan-out with shared globals, sharded fan-in counters, and an
exactly-once completion callback (the Client's cluster methods are the API)."""
