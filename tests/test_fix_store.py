"""ringex.fix.store: what a turn commits is there after a reopen, and only that."""

from __future__ import annotations

import os

from ringex.fix.store import ROOM, FixStore


def test_sessions_outbox_orders_and_positions_survive_a_reopen(tmp_path):
    with FixStore(tmp_path) as store:
        record = store.create_session("C1", 1001)
        for seq in range(1, 6):
            record.save_sent(seq, b"message %d" % seq)
        record.next_sender_seq, record.next_target_seq = 6, 3
        store.put_order(7, {"key": 7, "status": "0"}, live=True)
        store.put_order(8, {"key": 8, "status": "2"}, live=False)
        store.bind_cl_ord_id(1001, "o1", 7)
        store.put_request(9, {"cid": 9})
        store.put_int("events/ACME", 42)
        store.commit()
        # a turn that is never committed leaves nothing behind
        record.save_sent(6, b"lost")
        record.next_sender_seq = 7
        store.put_int("events/ACME", 99)
    with FixStore(tmp_path) as store:
        record = store.session("C1")
        assert (record.account, record.next_sender_seq, record.next_target_seq) == (1001, 6, 3)
        assert list(record.sent_messages(2, 4)) == [(2, b"message 2"), (3, b"message 3"), (4, b"message 4")]
        assert [seq for seq, _ in record.sent_messages(1, 100)] == [1, 2, 3, 4, 5]
        assert [doc["key"] for doc in store.live_orders()] == [7]
        assert store.order(8) == {"key": 8, "status": "2"}
        assert store.order_key(1001, "o1") == 7 and store.order_key(1002, "o1") is None
        assert list(store.requests()) == [{"cid": 9}]
        assert store.get_int("events/ACME") == 42
        assert store.session("C2") is None


def test_reads_see_the_turn_s_own_writes_and_a_reset_empties_one_session(tmp_path):
    with FixStore(tmp_path) as store:
        one, two = store.create_session("C1", 1), store.create_session("C2", 2)
        for seq in (1, 2, 3):
            one.save_sent(seq, b"one")
            two.save_sent(seq, b"two")
        assert len(list(one.sent_messages(1, 3))) == 3  # before the commit
        store.commit()
        one.reset()
        assert (one.next_sender_seq, one.next_target_seq) == (1, 1)
        assert list(one.sent_messages(1, 3)) == [] and len(list(two.sent_messages(1, 3))) == 3
        store.commit()
        assert store.sessions() == ["C1", "C2"]


def test_the_map_file_is_allocated_ahead_of_what_the_store_writes(tmp_path):
    # With writemap a page written into a hole the disk cannot fill is a SIGBUS; the
    # store keeps the file allocated ahead of its pages, also within one transaction
    # larger than that lead.
    def allocated() -> int:
        return os.stat(tmp_path / "fix-sessions" / "data.mdb").st_blocks * 512

    def used(store: FixStore) -> int:
        return (store.env.info()["last_pgno"] + 1) * store.env.stat()["psize"]

    with FixStore(tmp_path, map_size=256 << 20) as store:
        assert allocated() >= used(store) + ROOM // 2
        record = store.create_session("C1", 1001)
        for seq in range(1, 12_001):  # ~24 MiB in one transaction: more than ROOM
            record.save_sent(seq, bytes([seq % 251]) * 2000)
            assert allocated() >= used(store) + store._spent  # nothing is written into a hole
        store.commit()
        assert used(store) > ROOM
        assert allocated() >= used(store) + ROOM // 2
    with FixStore(tmp_path, map_size=256 << 20) as store:
        record = store.session("C1")
        assert [seq for seq, _ in record.sent_messages(11_999, 12_000)] == [11_999, 12_000]


def test_without_writemap_nothing_is_allocated_ahead(tmp_path):
    with FixStore(tmp_path, writemap=False) as store:
        store.create_session("C1", 1001)
        store.commit()
    assert os.stat(tmp_path / "fix-sessions" / "data.mdb").st_blocks * 512 < 1 << 20
