"""The matching engine: the book's owner, the shard process, recovery, offline matching."""
