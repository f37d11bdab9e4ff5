"""ringex: a limit order book exchange built as an LMAX-style disruptor in Python."""

__version__ = "0.1.0"
