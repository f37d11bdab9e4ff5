"""FIX 4.4 order entry (docs/fix.md): codec and session (sans-IO), order router, store, acceptor process, client."""
