"""``ringex match``: CSV in, JSON lines out, through the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ringex.codes import EventKind, EventReason, OrderType, Side, Tif
from ringex.events import event_to_dict
from ringex.records import EVENT

HEADER = "op,order_id,account,symbol,side,type,tif,price,qty\n"


def ringex_match(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ringex", "match", *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text(HEADER + body)
    return path


def test_trades_print_at_the_makers_price_with_both_order_ids(tmp_path):
    orders = write(tmp_path, "new,1,10,ACME,sell,limit,gtc,101,5\nnew,2,20,ACME,buy,limit,gtc,103,3\n")
    done = ringex_match(orders)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [x["event"] for x in lines] == ["accepted", "trade"]
    trade = lines[1]
    assert (trade["symbol"], trade["trade_id"], trade["price"], trade["qty"]) == ("ACME", 1, 101, 3)
    assert (trade["maker_order_id"], trade["taker_order_id"]) == (1, 2)
    assert trade["line"] == 3 and trade["maker_remaining"] == 2


def test_several_symbols_get_one_book_each_and_events_stay_in_file_order(tmp_path):
    orders = write(
        tmp_path,
        "new,1,10,ACME,sell,limit,gtc,100,5\n"
        "new,2,10,BOLT,sell,limit,gtc,100,5\n"
        "new,3,20,BOLT,buy,market,ioc,,2\n"
        "new,4,20,ACME,buy,limit,fok,100,6\n"
        "cancel,1,10,ACME,,,,,\n",
    )
    done = ringex_match(orders)
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    assert [(x["line"], x["symbol"], x["event"]) for x in lines] == [
        (2, "ACME", "accepted"),
        (3, "BOLT", "accepted"),
        (4, "BOLT", "trade"),
        (5, "ACME", "cancelled"),
        (6, "ACME", "cancelled"),
    ]
    assert lines[3]["reason"] == "fok_unfilled" and lines[4]["reason"] == "user_request"


def test_rule_breaking_rows_are_answered_with_rejections_not_errors(tmp_path):
    orders = write(
        tmp_path, "new,1,10,ACME,buy,limit,gtc,100,0\nnew,2,10,ACME,buy,market,gtc,,5\ncancel,7,10,ACME,,,,,\n"
    )
    done = ringex_match(orders)
    assert done.returncode == 0
    assert [json.loads(x)["reason"] for x in done.stdout.splitlines()] == ["bad_qty", "bad_order_type", "unknown_order"]


def test_a_malformed_row_stops_with_its_line_and_writes_nothing(tmp_path):
    out = tmp_path / "events.jsonl"
    orders = write(tmp_path, "new,1,10,ACME,buy,limit,gtc,100,5\nnew,2,10,ACME,sideways,limit,gtc,100,5\n")
    done = ringex_match(orders, "-o", out)
    assert done.returncode == 2
    assert "line 3" in done.stderr and "side" in done.stderr
    assert not out.exists() and done.stdout == ""
    assert list(tmp_path.iterdir()) == [orders]


def test_output_file_is_written_whole(tmp_path):
    out = tmp_path / "events.jsonl"
    out.write_text("old contents\n")
    orders = write(tmp_path, "new,1,10,ACME,buy,limit,gtc,100,5\n")
    assert ringex_match(orders, "-o", out).returncode == 0
    assert json.loads(out.read_text())["event"] == "accepted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "orders.csv"]


def test_band_flags_override_the_files_prices(tmp_path):
    orders = write(tmp_path, "new,1,10,ACME,buy,limit,gtc,100,5\nnew,2,10,ACME,buy,limit,gtc,150,5\n")
    done = ringex_match(orders, "--price-min", 90, "--price-max", 120)
    assert [json.loads(x).get("reason") for x in done.stdout.splitlines()] == [None, "bad_price"]


def test_missing_columns_and_missing_file_are_clear_errors(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("op,order_id,symbol\nnew,1,ACME\n")
    done = ringex_match(path)
    assert done.returncode == 2 and "line 1" in done.stderr and "account" in done.stderr
    done = ringex_match(tmp_path / "nope.csv")
    assert done.returncode == 2 and "cannot open" in done.stderr


def test_event_to_dict_names_reasons_and_parties():
    ev = np.zeros(2, EVENT)
    ev[0] = (
        EventKind.CANCELLED,
        Side.BUY,
        EventReason.SELF_TRADE,
        OrderType.LIMIT,
        Tif.GTC,
        4,
        5,
        6,
        7,
        8,
        100,
        3,
        0,
        0,
        0,
        0,
        0,
        0,
        b"ACME",
    )
    ev[1] = (
        EventKind.TRADE,
        Side.SELL,
        0,
        OrderType.MARKET,
        Tif.IOC,
        4,
        5,
        6,
        7,
        8,
        100,
        3,
        1,
        9,
        10,
        11,
        12,
        13,
        b"ACME",
    )
    cancelled, trade = (event_to_dict(r) for r in ev)
    assert cancelled["event"] == "cancelled" and cancelled["reason"] == "self_trade" and cancelled["side"] == "buy"
    assert cancelled["symbol"] == "ACME" and cancelled["seq"] == 4 and cancelled["qty"] == 3
    assert trade["taker_side"] == "sell" and trade["trade_id"] == 9
    assert (trade["taker_order_id"], trade["maker_order_id"], trade["maker_remaining"]) == (6, 10, 13)
    json.dumps([cancelled, trade])
