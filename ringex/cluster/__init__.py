"""Past one machine: copies of the journal on NATS JetStream, and who reads them.

```
 primary: journal (LMDB) ──► bridge ──► JetStream  <name>_cmd: <name>.cmd.<SYMBOL>
                                        (Raft)     <name>_evt: <name>.evt.<SYMBOL>
                                          │   │
            ┌─────────────────────────────┘   └──────────────────────────┐
 follower:  follower feeder ──► LMDB + out-ring ──► notifier        standby: standby feeder ──► in-ring ──► journaler, matcher
```

- ``ringex.cluster.jetstream``: the streams, subjects and message format (sans-IO
  encoding of a batch of journal records, and the stream set-up).
- ``ringex.cluster.bridge``: the primary's bridge role: durable journal records to
  JetStream, exactly once, in journal order, never ahead of the journal.
- ``ringex.cluster.follower``: a follower's feeder role: the event streams into a local
  journal and out-ring, read by the unchanged notifier.
- ``ringex.cluster.standby``: a standby's feeder role: the command streams into the
  in-rings of an exchange run without a gateway; and ``promote``.
- ``ringex.cluster.server``: a local ``nats-server`` from the venv (``ringex up
  --with-nats``, the tests, the benchmark).

LMDB stays the source of truth: JetStream holds copies, and the bridge can always
re-publish from the journal. docs/scale-out.md says what each mode guarantees.
"""
