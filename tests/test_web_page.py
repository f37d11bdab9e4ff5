"""The web view in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them) driven by Selenium, against a whole
exchange started as ``ringex up`` (``support.running.RunningExchange``).

```
 test ──order entry──► ringex up (gateway, matcher, journaler, notifier) ──HTTP + WebSocket──► Chromium
   └────────── reads the page's DOM and window.ringex through Selenium ◄───────────────────────┘
```

What a person sees is what is checked: the ladder's rows, the tape's rows, the private
panel's rows (their text and data- attributes); the chart through the library's own
copy of its series. A lost message is simulated by a script the browser runs before
the page (it drops one depth update), not by anything in the page.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections import deque
from pathlib import Path

import pytest
from support.running import RunningExchange

from ringex.market_data.client import MdClient
from ringex.topology import NOTIFIER

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

QUICK = bool(os.environ.get("RINGEX_QUICK"))
LEVELS = 20
# The burst: 1,000 trades a second (10 resting sells swept by one buy, 100 times a
# second) for 10 s; under RINGEX_QUICK for 4 s.
BURST_RATE = 1000
BURST_S = 4.0 if QUICK else 10.0

LADDER_JS = """
const rows = (id) => [...document.querySelectorAll('#' + id + ' tr[data-price]')]
  .map(r => [Number(r.dataset.price), Number(r.dataset.qty)]);
const best = (id) => [...document.querySelectorAll('#' + id + ' tr.best')].map(r => Number(r.dataset.price));
return {asks: rows('asks').reverse(), bids: rows('bids'), bestAsk: best('asks'), bestBid: best('bids'),
        spread: document.getElementById('spread').textContent,
        bars: [...document.querySelectorAll('#ladder tr[data-price] .bar')].map(b => b.style.width)};
"""
TAPE_JS = """
return [...document.querySelectorAll('#tape tr[data-price]')].map(r =>
  ({price: Number(r.dataset.price), qty: Number(r.dataset.qty), side: r.className,
    time: r.cells[0].textContent, id: Number(r.dataset.tradeId)}));
"""
ORDERS_JS = """
const rows = (id) => [...document.querySelectorAll('#' + id + ' tr')].map(r => ({...r.dataset,
  cells: [...r.cells].map(c => c.textContent)}));
return {orders: rows('orders'), fills: rows('fills'), who: document.getElementById('private-account').textContent,
        login: document.getElementById('login-state').textContent};
"""
# Runs in the page before its own scripts: the next depth update after
# window.__dropDepth is set is lost, as if the network had eaten it.
DROP_ONE_DEPTH_UPDATE = """
(() => {
  const Native = window.WebSocket;
  window.__dropDepth = 0;
  window.__dropped = 0;
  window.WebSocket = class extends Native {
    set onmessage(handler) {
      super.onmessage = (ev) => {
        if (window.__dropDepth > 0 && ev.data.includes('"depth_update"')) {
          window.__dropDepth -= 1;
          window.__dropped += 1;
          return;
        }
        handler(ev);
      };
    }
  };
})();
"""


def _find(*names: str) -> str | None:
    for name in names:
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser_paths():
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver")
    if chromium is None or driver is None:
        why = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs them: missing there is a broken CI, not a skip
        pytest.skip(why)
    return chromium, driver


@pytest.fixture(scope="module")
def exchange(tmp_path_factory, browser_paths):
    ex = RunningExchange(tmp_path_factory.mktemp("web") / "data", durability="async").start()
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture
def browser(browser_paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1000", "--mute-audio"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the system's driver: Selenium must not look for (or download) one of its own
    os.environ.setdefault("SE_OFFLINE", "true")
    drv = webdriver.Chrome(service=Service(driver), options=options)
    drv.set_script_timeout(30)
    try:
        yield drv
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, no failed load, no CSP violation
    finally:
        drv.quit()


def wait_for(browser, check, timeout: float = 20.0, what: str = ""):
    """Poll ``check()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


def open_page(browser, exchange, symbol: str, *, drop_script: bool = False) -> None:
    if drop_script:
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": DROP_ONE_DEPTH_UPDATE})
    # the address ringex up's banner gives
    url = re.search(r"web view\s+(http://\S+)", exchange.output).group(1)
    assert url == f"http://127.0.0.1:{exchange.ws_port}/"
    browser.get(f"{url}#{symbol}")
    wait_for(browser, lambda: browser.execute_script("return window.ringex && ringex.app.state") == "live", what="live")
    wait_for(browser, lambda: browser.execute_script("return ringex.app.book.synced"), what="the snapshot")


def ladder(browser) -> dict:
    return browser.execute_script(LADDER_JS)


def exchange_book(exchange, symbol: str) -> tuple[list, list]:
    """The exchange's book as a fresh subscriber sees it: a depth snapshot."""
    with MdClient("127.0.0.1", exchange.md_port) as md:
        md.subscribe("depth", symbol, levels=LEVELS)
        snap = md.recv_until(lambda m: m["type"] == "depth_snapshot")[-1]
    return [list(x) for x in snap["asks"]], [list(x) for x in snap["bids"]]


def ladder_matches_exchange(browser, exchange, symbol: str):
    asks, bids = exchange_book(exchange, symbol)
    page = ladder(browser)
    return (page["asks"] == asks and page["bids"] == bids) and page


@contextlib.contextmanager
def traders(exchange, n: int = 2):
    with exchange.sessions(n) as clients:
        yield clients


def accepted(reply) -> int:
    assert reply.msg_type == "K", str(reply)  # K: acknowledged (docs/protocol.md)
    return reply.order_id


# ---- what the page shows ---------------------------------------------------------------


def test_the_ladder_shows_resting_orders_and_resyncs_after_a_lost_update(browser, exchange):
    open_page(browser, exchange, "ACME", drop_script=True)
    with traders(exchange) as (buyer, seller):
        for i in range(5):
            accepted(buyer.buy("ACME", 10 + i, 100 - i))
            accepted(seller.sell("ACME", 20 + i, 105 + i))
    want_bids = [[100 - i, 10 + i] for i in range(5)]
    want_asks = [[105 + i, 20 + i] for i in range(5)]
    page = wait_for(
        browser, lambda: (lambda p: p["bids"] == want_bids and p["asks"] == want_asks and p)(ladder(browser))
    )
    assert page["bestBid"] == [100] and page["bestAsk"] == [105]
    assert page["spread"].startswith("spread 5")
    # sizes as bars, the largest full: asks from the top (worst first), then bids
    sizes = [q for _, q in reversed(want_asks)] + [q for _, q in want_bids]
    assert [round(float(w.rstrip("%"))) for w in page["bars"]] == [round(100 * q / max(sizes)) for q in sizes]

    # lose one depth update: the next one shows the gap, the page starts again from a snapshot
    browser.execute_script("window.__dropDepth = 1")
    with traders(exchange) as (buyer, _):
        accepted(buyer.buy("ACME", 3, 101))  # this update is lost
        # the next order only once it is: sent sooner, both could reach the notifier in
        # one batch, one depth update, all of it lost and no gap left to see
        wait_for(browser, lambda: browser.execute_script("return window.__dropped") == 1, what="the lost update")
        accepted(buyer.buy("ACME", 4, 102))  # this one has a seq gap before it
    want_bids = [[102, 4], [101, 3], *want_bids]
    page = wait_for(browser, lambda: (lambda p: p["bids"] == want_bids and p)(ladder(browser)), what="resynced")
    assert browser.execute_script("return [window.__dropped, ringex.perf.resyncs]") == [1, 1]
    assert page["bestBid"] == [102] and page["spread"].startswith("spread 3")
    assert wait_for(browser, lambda: ladder_matches_exchange(browser, exchange, "ACME"))


def test_a_crossing_order_appears_on_the_tape_and_the_chart(browser, exchange):
    open_page(browser, exchange, "BOLT")
    with traders(exchange) as (buyer, seller):
        accepted(seller.sell("BOLT", 7, 200))
        wait_for(browser, lambda: ladder(browser)["asks"] == [[200, 7]])
        accepted(buyer.buy("BOLT", 3, 200))  # crosses: a trade of 3 at 200, the buyer the aggressor
    tape = wait_for(browser, lambda: browser.execute_script(TAPE_JS), what="the trade on the tape")
    assert [(t["price"], t["qty"], t["side"]) for t in tape] == [(200, 3, "buy")]
    assert len(tape[0]["time"]) == len("12:34:56.789")
    candles = wait_for(browser, lambda: browser.execute_script("return ringex.candles()"), what="a candle")
    assert [(c["open"], c["high"], c["low"], c["close"]) for c in candles] == [(200, 200, 200, 200)]
    assert [v["value"] for v in browser.execute_script("return ringex.volumes()")] == [3]
    assert wait_for(browser, lambda: ladder(browser)["asks"] == [[200, 4]])
    # a second trade at another price joins the same candle or the next one
    with traders(exchange) as (buyer, seller):
        accepted(seller.sell("BOLT", 5, 198))
        accepted(buyer.buy("BOLT", 5, 199))
    wait_for(browser, lambda: len(browser.execute_script(TAPE_JS)) == 2)
    candles = browser.execute_script("return ringex.candles()")
    assert min(c["low"] for c in candles) == 198 and candles[-1]["close"] == 198
    assert sum(v["value"] for v in browser.execute_script("return ringex.volumes()")) == 8
    assert "last 198" in browser.find_element("id", "last-price").text


def test_the_private_panel_shows_only_the_logged_in_accounts_orders(browser, exchange):
    from selenium.webdriver.common.by import By

    open_page(browser, exchange, "CRUX")
    mine, theirs = list(exchange.accounts.items())[:2]

    def log_in(account, token):
        browser.find_element(By.ID, "account").clear()
        browser.find_element(By.ID, "account").send_keys(str(account))
        browser.find_element(By.ID, "secret").send_keys(str(token))
        browser.find_element(By.ID, "login-button").click()

    # a wrong secret is refused, said so, and the page goes on logged out
    log_in(mine[0], mine[1] ^ 1)
    panel = wait_for(browser, lambda: (lambda p: "login failed" in p["login"] and p)(browser.execute_script(ORDERS_JS)))
    assert "credentials" in panel["login"]
    wait_for(browser, lambda: browser.execute_script("return ringex.app.state") == "live", what="reconnected")

    # orders placed before the login come from the orders channel's snapshot: what is
    # open, with the ordered and filled quantities (which it does not carry) left blank
    # (the exchange is the module's: earlier tests' open orders of the account show too)
    with traders(exchange) as (me, other):
        my_early = accepted(me.buy("BOLT", 4, 55))
        accepted(other.buy("BOLT", 3, 54))
    log_in(*mine)
    wait_for(browser, lambda: browser.execute_script("return ringex.app.account") == mine[0], what="logged in")

    def rows_of(panel, what="orders"):
        return {int(o["orderId"]): o for o in panel[what]}

    panel = wait_for(
        browser,
        lambda: (lambda p: my_early in rows_of(p) and p)(browser.execute_script(ORDERS_JS)),
        what="the order placed before the login",
    )
    early = rows_of(panel)[my_early]
    assert early["status"] == "open"
    assert early["cells"][0] == "" and early["cells"][1:3] == ["BOLT", str(my_early)]
    assert early["cells"][5:8] == ["", "", "4"]
    with traders(exchange) as (me, other):
        my_bid = accepted(me.buy("CRUX", 5, 50))
        their_ask = accepted(other.sell("CRUX", 6, 60))
        their_bid = accepted(other.buy("CRUX", 2, 49))
        my_ask = accepted(me.sell("CRUX", 1, 61))
        accepted(me.cancel("CRUX", my_ask))
        accepted(other.sell("CRUX", 2, 50))  # trades with my bid: a fill for each side
        accepted(other.sell("BOLT", 1, 55))  # and with the order from the snapshot
    panel = wait_for(
        browser,
        lambda: (lambda p: {my_bid, my_early} <= set(rows_of(p, "fills")) and my_ask in rows_of(p) and p)(
            browser.execute_script(ORDERS_JS)
        ),
        what="my orders and my fills",
    )
    assert f"account {mine[0]}" in panel["who"]
    rows = rows_of(panel)
    assert {my_bid, my_ask, my_early} <= set(rows)
    # filled since the login: 1 of it; before, unknown: the column stays blank
    assert rows[my_early]["status"] == "partly filled" and rows[my_early]["cells"][6:8] == ["", "3"]
    assert {o["account"] for o in panel["orders"]} == {str(mine[0])}
    assert rows[my_bid]["status"] == "partly filled" and rows[my_bid]["cells"][6:8] == ["2", "3"]
    assert rows[my_ask]["status"] == "cancelled: user_request"
    fills = rows_of(panel, "fills")
    assert set(fills) == {my_bid, my_early} and {f["account"] for f in fills.values()} == {str(mine[0])}
    assert fills[my_bid]["cells"][4:] == ["50", "2", "maker"] and fills[my_early]["cells"][4:] == ["55", "1", "maker"]
    assert not {their_ask, their_bid} & {int(r["orderId"]) for r in panel["orders"] + panel["fills"]}
    assert theirs[0] not in {int(o["account"]) for o in panel["orders"] + panel["fills"]}


def test_the_page_recovers_when_the_notifier_is_killed_and_restarted(browser, exchange):
    open_page(browser, exchange, "DYNE")
    with traders(exchange) as (buyer, seller):
        accepted(buyer.buy("DYNE", 9, 300))
        accepted(seller.sell("DYNE", 8, 310))
    wait_for(browser, lambda: ladder(browser)["bids"] == [[300, 9]] and ladder(browser)["asks"] == [[310, 8]])
    pid = exchange.pid_of(NOTIFIER)
    os.kill(pid, signal.SIGKILL)
    wait_for(browser, lambda: browser.execute_script("return ringex.app.reconnects") >= 1, what="the page to notice")
    # while it is down the book moves on (trading goes on: market_data_outage = "continue")
    with traders(exchange) as (buyer, seller):
        accepted(buyer.buy("DYNE", 4, 301))
        accepted(seller.sell("DYNE", 2, 300))  # trades with the 301 bid
    wait_for(
        browser, lambda: browser.execute_script("return ringex.app.state") == "live", timeout=60, what="live again"
    )
    assert exchange.pid_of(NOTIFIER) != pid  # the supervisor's new one
    # the browser logged the refused connections while the notifier was down; only those
    down = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert all("WebSocket connection to" in e["message"] for e in down), down
    page = wait_for(browser, lambda: ladder_matches_exchange(browser, exchange, "DYNE"), timeout=30)
    assert page["bids"] == [[301, 2], [300, 9]] and page["asks"] == [[310, 8]]
    # and it is subscribed again: new trades reach the tape
    with traders(exchange) as (buyer, seller):
        accepted(seller.sell("DYNE", 1, 301))
    wait_for(browser, lambda: any(t["qty"] == 1 and t["price"] == 301 for t in browser.execute_script(TAPE_JS)))


# ---- under load ------------------------------------------------------------------------


class Burst(threading.Thread):
    """``rate`` trades a second for ``seconds`` on ``symbol``: every 10 ms the seller
    rests ``rate/100`` sells of 1 lot at one price (50-56) and the buyer sweeps them
    with one order; a third account keeps bids coming and going below (10-39), so the
    ladder churns. The symbol must have no bid above 9 and no ask below 57."""

    def __init__(self, exchange, symbol: str, rate: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.exchange, self.symbol, self.rate, self.seconds = exchange, symbol, rate, seconds
        self.trades = 0
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        per_tick = self.rate // 100
        with self.exchange.sessions(3) as (buyer, seller, churner):
            resting: deque[int] = deque()
            start = time.monotonic()
            tick = 0
            while (now := time.monotonic()) - start < self.seconds:
                price = 50 + tick % 7
                for _ in range(per_tick):
                    seller.submit_order(self.symbol, "sell", 1, price)
                buyer.submit_order(self.symbol, "buy", per_tick, price)
                churner.submit_order(self.symbol, "buy", 1 + tick % 5, 10 + (tick * 37) % 30)
                cancel = resting.popleft() if len(resting) > 30 else None
                if cancel is not None:
                    churner.send(churner.conn.cancel(self.symbol, cancel)[1])
                for _ in range(per_tick):
                    accepted(seller.next_reply())
                accepted(buyer.next_reply())
                resting.append(accepted(churner.next_reply()))
                if cancel is not None:
                    accepted(churner.next_reply())
                self.trades += per_tick
                tick += 1
                time.sleep(max(0.0, start + tick * 0.01 - time.monotonic()))
            self.elapsed = now - start


def main_thread_cpu_s(browser) -> float:
    """CPU seconds the page's main thread has used (Chromium's ThreadTime metric):
    unlike the Performance API's wall-clock times, not inflated when other processes
    take the cores."""
    metrics = browser.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return next(m["value"] for m in metrics if m["name"] == "ThreadTime")


def test_a_burst_of_trades_leaves_the_page_responsive_and_its_ladder_right(browser, exchange):
    symbol = "BOLT"  # after the tape test: one ask at 200 (and the 198s taken), no bid
    open_page(browser, exchange, symbol)
    browser.execute_script("ringex.perf.longTasks.length = 0; ringex.perf.renderMs.length = 0")
    frames0, drawn0 = browser.execute_script("return [ringex.perf.frames, ringex.perf.renderTotalMs]")
    browser.execute_cdp_cmd("Performance.enable", {})
    cpu0 = main_thread_cpu_s(browser)
    burst = Burst(exchange, symbol, BURST_RATE, BURST_S)
    t0 = time.monotonic()
    burst.start()
    round_trips = []
    while burst.is_alive():
        s = time.monotonic()
        browser.execute_script("return document.getElementById('spread').textContent")
        round_trips.append(time.monotonic() - s)
        time.sleep(0.2)
    burst.join()
    wall = time.monotonic() - t0
    cpu = (main_thread_cpu_s(browser) - cpu0) / wall  # the page's main thread, CPU s per s
    assert burst.error is None, burst.error
    rate = burst.trades / burst.elapsed
    assert rate >= 0.9 * BURST_RATE, f"the load reached only {rate:.0f} trades/s"

    stats = browser.execute_script(
        "return {frames: ringex.perf.frames, render: ringex.perf.renderMs, long: ringex.perf.longTasks, parts: ringex.perf.parts,"
        " drawn: ringex.perf.renderTotalMs,"
        " resyncs: ringex.perf.resyncs, gaps: ringex.perf.gaps, messages: ringex.perf.messages}"
    )
    frames = stats["frames"] - frames0
    drawing = (stats["drawn"] - drawn0) / (wall * 1000)  # of the main thread's time
    render = sorted(stats["render"])
    p99_render = render[int(0.99 * (len(render) - 1))]
    long_ms = sum(d for _, d in stats["long"])
    worst_long = max((d for _, d in stats["long"]), default=0.0)
    worst_trip = max(round_trips)
    report = (
        f"{burst.trades} trades in {burst.elapsed:.1f} s ({rate:.0f}/s); {frames} frames ({frames / wall:.0f}/s); "
        f"render p99 {p99_render:.2f} ms, max {render[-1]:.2f} ms, {100 * drawing:.1f}% of the time; long tasks {len(stats['long'])}, "
        f"{long_ms:.0f} ms in all, worst {worst_long:.0f} ms; script round trip max {worst_trip * 1000:.0f} ms; "
        f"main thread CPU {100 * cpu:.0f}%; {stats['messages']} messages, resyncs {stats['resyncs']}, trade gaps {stats['gaps']}; per part (frames, "
        "mean ms, max ms): "
        + ", ".join(f"{k} {v['n']} {v['ms'] / max(1, v['n']):.2f} {v['max']:.1f}" for k, v in stats["parts"].items())
    )
    print(report)
    Path(os.environ.get("RINGEX_WEB_BURST_REPORT", os.devnull)).write_text(report + "\n")
    # Responsive, as a person would feel it. First what other processes on the cores
    # cannot fake: the page's drawing takes under 20% of the time and its main thread
    # under three quarters of a core (CPU time, Chromium's ThreadTime), and a frame's own
    # work fits in two frames at 60 Hz at the 99th percentile. Measured here, on two cores
    # shared with the exchange, the load and other test runs: drawing 6-9% (21% at a
    # load average of 8), CPU 18% alone and up to 53% in a full CI run (parsing 1,100
    # messages a second costs more on a busy machine), p99 5-24 ms; the same page drawing
    # per message instead of per animation frame drew 38-43% of the time (45% CPU), and
    # fails on drawing: the bound that tells the two designs apart.
    # Then wall-clock bounds, which a busy machine can stretch: it keeps drawing (>= 5
    # frames a second; 15-45 measured), is never blocked for a second (Long Tasks API;
    # worst 70-540 ms measured), and answers a script call from outside within 3 s.
    assert drawing < 0.20 and cpu < 0.75 and p99_render < 33.0, report
    assert frames >= 5 * wall, report
    assert worst_long < 1000 and long_ms < 0.5 * wall * 1000, report
    assert worst_trip < 3.0, report
    assert stats["resyncs"] == 0 and stats["gaps"] == 0, report
    # and right: the ladder is the exchange's book
    assert wait_for(browser, lambda: ladder_matches_exchange(browser, exchange, symbol), timeout=30)
    tape = browser.execute_script(TAPE_JS)
    assert len(tape) == 40 and [t["id"] for t in tape] == sorted((t["id"] for t in tape), reverse=True)
