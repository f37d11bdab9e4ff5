"""Order entry: the binary protocol, sessions, the gateway process, accounts, the client."""
