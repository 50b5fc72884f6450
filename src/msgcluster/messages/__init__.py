"""Tracked messages: validated and encoded for sending (``_outgoing``), sent
with their record first (``_sending``), their records read, updated,
completed and failed (``_messages``)."""
