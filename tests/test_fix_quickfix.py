"""An independent engine against the acceptor: a QuickFIX (C++, Debian's libquickfix 1.15.1)
initiator with its default validation (FIX44.xml data dictionary, field order, types).

It logs on, trades every way, replaces, cancels, is refused a cancel, drops its
connection, misses fills while away, logs on again and recovers them by its own
ResendRequest, and logs out, and neither side sends or receives one session-level
Reject. CI installs libquickfix-dev (``.ci/run``); elsewhere the test is skipped when
it is missing, and fails under CI=true so a missing install step cannot hide.
"""

from __future__ import annotations

import os

import pytest
from support import quickfix
from support.fix import ALICE, BOB, FixExchange, report

from ringex.codes import ExecType, FixSide


@pytest.fixture
def initiator_binary():
    missing = quickfix.available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the QuickFIX initiator's build dependencies: {missing}")
        pytest.skip(missing)
    return quickfix.build()


def test_a_quickfix_initiator_trades_cancels_replaces_and_recovers_without_a_reject(tmp_path, initiator_binary):
    exchange = FixExchange(tmp_path / "x")
    qf = quickfix.QuickFixInitiator(initiator_binary, tmp_path / "qf", exchange.port, *ALICE)
    try:
        bob = exchange.client("BOB", BOB)
        qf.send("logon")
        qf.expect(lambda line: line == "LOGGEDON")

        # a limit order rests, and fills in two parts, the second by a market order
        qf.send("order q1 buy 10 100 1 2")
        q1 = qf.app("35=8", "11=q1", "150=0", "39=0")
        order_id = q1.split("|37=")[1].split("|")[0]
        bob.new_order("b1", "ACME", FixSide.SELL, 4, price=100)
        report(bob, "b1", ExecType.TRADE)
        qf.app("11=q1", "150=F", "39=1", "32=4", "31=100", "14=4", "151=6")
        bob.new_order("b2", "ACME", FixSide.SELL, 2, ord_type="1")
        qf.app("11=q1", "150=F", "14=6", "151=4", "6=100")
        # its own market order, against Bob's offer; an IOC with nothing to meet
        bob.new_order("b3", "ACME", FixSide.SELL, 3, price=120)
        report(bob, "b3", ExecType.NEW)
        qf.send("order q2 buy 3 0 3 1")
        qf.app("11=q2", "150=F", "39=2", "31=120")
        qf.send("order q3 sell 3 200 3 2")
        qf.app("11=q3", "150=0")
        qf.app("11=q3", "150=4", "39=4")

        # replace, cancel, and a cancel of nothing
        qf.send("replace q4 q1 buy 12 105")
        qf.app("11=q4", "41=q1", "150=5", f"37={order_id}", "38=12", "44=105", "151=6")
        qf.send("cancel q5 q4 buy")
        qf.app("11=q5", "41=q4", "150=4", "39=4", "14=6")
        qf.send("cancel q6 nope buy")
        qf.app("35=9", "11=q6", "102=1", "434=1")

        # post-only rests
        qf.send("order q7 buy 5 100 1 2 6")
        qf.app("11=q7", "150=0", "18=6")

        # gone without a Logout; fills while away; back, it asks for what it missed
        qf.send("drop")
        qf.expect(lambda line: line == "DROPPED")
        bob.new_order("b4", "ACME", FixSide.SELL, 5, price=100)
        report(bob, "b4", ExecType.TRADE)
        qf.send("logon")
        qf.expect(lambda line: line == "LOGGEDON")
        qf.app("11=q7", "150=F", "39=2", "43=Y")

        # and goes on trading
        qf.send("order q8 sell 1 900 1 2")
        qf.app("11=q8", "150=0")
        qf.send("logout")
        qf.expect(lambda line: line == "LOGGEDOUT")
        qf.send("quit")
        summary = qf.expect(lambda line: line.startswith("SUMMARY"))
    finally:
        qf.close()
        exchange.close()
    counts = dict(item.split("=") for item in summary.split()[1:])
    assert counts["rejects_in"] == "0" and counts["rejects_out"] == "0" and counts["business_rejects"] == "0", qf.lines
    assert int(counts["resend_requests_out"]) >= 1
    assert not [line for line in qf.lines if line.startswith("ADMIN-REJECT")]
    assert "rejected our message" not in exchange.log()
