"""Runtimes' shared core: consuming tracked messages (``_consume``: completion
checks, completion and failure for any kind of record) and ``safe_process_batch``
(``_safe_batch``). May be imported by the Client, the worker, the dead-letter
reconciliation and the Lambda/FastAPI integrations; never by queues/, read/,
messages/ or clusters/, which it builds on."""
