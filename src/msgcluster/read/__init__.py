"""The read pipeline: a received message (Lambda record, ReceiveMessage message
or queue message) -> what it is -> its body decoded as the reader declares ->
the view handlers get (``ParsedRecord``)."""
