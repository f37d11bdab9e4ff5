"""The journal's process: the journaler that drains every ring into LMDB (``ringex.wal``)."""
