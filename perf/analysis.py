"""From what the load generator recorded to latencies, percentiles, tables and the plot.

Three latencies per request, each from its intended send time (open loop) to when the
client could first see the answer (the kernel's receive time on the client's socket):

- ack: its ``K`` or ``X`` (ringex and the baseline ack only once the journal has it);
- trade: the first public trade whose taker is that request (an aggressive new order,
  or a replace that crossed), matched by (taker_order_id, ts_ns): the exchange stamps
  the receive time of the causing command on both;
- fill: the same to the taker's ``fill`` on its owner's private ``orders`` channel
  (read every ``loadgen.MD_POLL_S``, so its times are approximate: JSON only).

Percentiles go through an HdrHistogram (3 significant digits), whose encoding is kept in
the JSON so repeats can be merged and plots redrawn.
"""

from __future__ import annotations

import re

import numpy as np

from perf.workload import CANCEL, GTC, IOC, REPLACE
from ringex.codes import ReplyType
from ringex.topology import GATEWAY, JOURNALER, NOTIFIER, matcher_role

__all__ = [
    "PERCENTILES",
    "parse_md",
    "first_seen",
    "summarize",
    "merge",
    "analyse",
    "compare_table",
    "runs_table",
    "breakdown_table",
    "plot",
]

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
# latencies are recorded in ns from 1 ns to 2 minutes at 3 significant digits
HDR_MAX_NS = 120_000_000_000
_ACK = int(ReplyType.ACK)
# ringex's notifier (and the baseline) write compact JSON with a fixed key order
_TRADE_RE = re.compile(rb'"type":"trade".*?"taker_order_id":(\d+),"ts_ns":(\d+)')
_FILL_RE = re.compile(rb'"type":"fill".*?"order_id":(\d+).*?"liquidity":"taker".*?"ts_ns":(\d+)')
_ERROR_RE = re.compile(rb'"type":"error".*?"reason":"([^"]*)"')


def parse_md(kept: bytes, kept_ns: np.ndarray) -> dict:
    """The trade prints and taker fills among the kept market data lines, as rows of
    (order id, exchange ts_ns, receive ns), and the error reasons (a cut-off says why)."""
    trades, fills, errors = [], [], []
    for line, at in zip(kept.split(b"\n"), kept_ns.tolist(), strict=False):
        if m := _TRADE_RE.search(line):
            trades.append((int(m[1]), int(m[2]), at))
        elif m := _FILL_RE.search(line):
            fills.append((int(m[1]), int(m[2]), at))
        elif m := _ERROR_RE.search(line):
            errors.append(m[1].decode(errors="replace"))

    def rows(found):
        return np.array(found, dtype=np.uint64).reshape(-1, 3)

    return {"trades": rows(trades), "fills": rows(fills), "errors": errors}


def _key(order_id: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
    """One u64 per (order id, exchange ts): a hash, checked field by field after lookup."""
    with np.errstate(over="ignore"):
        return order_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ ts_ns.astype(np.uint64)


def first_seen(req_oid, req_ts, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For requests keyed by (order id, ts_ns), the receive time of the first event
    (rows of order id, ts_ns, receive ns) with the same key: (request indices, times)."""
    if len(events) == 0 or len(req_oid) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(events[:, 2], kind="stable")
    ev = events[order]
    ekey = _key(ev[:, 0], ev[:, 1])
    ukey, first = np.unique(ekey, return_index=True)  # earliest receive per key
    ev = ev[first]
    rkey = _key(req_oid, req_ts)
    pos = np.minimum(np.searchsorted(ukey, rkey), len(ukey) - 1)
    hit = (ukey[pos] == rkey) & (ev[pos, 0] == req_oid) & (ev[pos, 1] == req_ts)
    return np.flatnonzero(hit), ev[pos[hit], 2].astype(np.int64)


def _histogram(latencies_ns: np.ndarray):
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(1, HDR_MAX_NS, 3)
    values, counts = np.unique(np.clip(latencies_ns, 1, HDR_MAX_NS), return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        hist.record_value(v, c)
    return hist


def _figures(hist, count: int, keep_hdr: bool = True) -> dict:
    out: dict = {"count": count}
    if count:
        for p in PERCENTILES:
            out[f"p{p:g}"] = round(hist.get_value_at_percentile(p) / 1000, 1)
        out["max"] = round(hist.get_max_value() / 1000, 1)
        if keep_hdr:
            encoded = hist.encode()  # base64 of the compressed histogram
            out["hdr"] = encoded.decode() if isinstance(encoded, bytes) else encoded
    return out


def summarize(latencies_ns: np.ndarray, keep_hdr: bool = True) -> dict:
    """p50..p99.99 and max (µs) through an HdrHistogram, and the histogram itself
    (base64 of its compressed encoding) so a reader can merge repeats or re-plot."""
    latencies_ns = np.asarray(latencies_ns)
    return _figures(_histogram(latencies_ns), int(len(latencies_ns)), keep_hdr)


def merge(summaries: list[dict]) -> dict:
    """One summary of several (repeats of a step), from their histograms."""
    from hdrh.histogram import HdrHistogram

    total = HdrHistogram(1, HDR_MAX_NS, 3)
    count = 0
    for s in summaries:
        if s.get("hdr"):
            total.add(HdrHistogram.decode(s["hdr"]))
            count += s["count"]
    return _figures(total, count)


def analyse(rec: dict, warmup_ns: int) -> dict:
    """Latency summaries and counts of one step from the load generator's record
    (``perf/loadgen.py``); requests due in the first ``warmup_ns`` are left out."""
    md = parse_md(rec["md_kept"].tobytes(), rec["md_kept_ns"])
    intended, sent, ack_ns = rec["intended_ns"], rec["sent_ns"], rec["ack_ns"]
    measured = intended >= rec["t0"] + warmup_ns
    acked = ack_ns > 0
    is_k = rec["ack_type"] == _ACK
    kind = rec["kind"]
    offset = int(rec["wall_minus_mono"])
    # requests that may take liquidity: new orders and replaces that were acked
    takers = np.flatnonzero(measured & is_k & (kind != CANCEL))
    oid, ts = rec["order_id"][takers], rec["ts_ns"][takers]
    lat = {"ack": (ack_ns - intended)[measured & acked]}
    split = {}
    for name, events in (("trade", md["trades"]), ("fill", md["fills"])):
        idx, seen = first_seen(oid, ts, events)
        lat[name] = seen - intended[takers[idx]]
        split[f"gateway_to_{name}"] = seen + offset - ts[idx].astype(np.int64)
    # split at the exchange's receive stamp: what the client side and TCP cost, and what
    # the exchange took from reading the request to the client receiving its reply
    stamped = measured & acked
    split["to_gateway"] = rec["ts_ns"][stamped].astype(np.int64) - offset - intended[stamped]
    split["gateway_to_ack"] = ack_ns[stamped] + offset - rec["ts_ns"][stamped].astype(np.int64)
    late = (sent - intended)[measured & (sent > 0)]
    from ringex.codes import Reason

    rejected = rec["reason"][measured & acked & ~is_k]
    reasons = {Reason(int(r)).name: int(np.count_nonzero(rejected == r)) for r in np.unique(rejected)}
    return {
        "requests": int(np.count_nonzero(measured)),
        "acked": int(np.count_nonzero(measured & acked)),
        "not_acked": int(np.count_nonzero(measured & ~acked)),
        "rejected": reasons,
        "kinds": {
            name: int(np.count_nonzero(kind[measured] == code))
            for name, code in (("gtc", GTC), ("ioc", IOC), ("cancel", CANCEL), ("replace", REPLACE))
        },
        "trades_seen": int(len(md["trades"])),
        "taker_fills_seen": int(len(md["fills"])),
        "md_lines": int(rec["md_lines"]),
        "matcher_rejects_seen": int(rec["md_rejected"]),
        "md_sessions_cut_off": md["errors"],
        "requests_that_traded": int(len(lat["trade"])),
        "latency_us": {name: summarize(v) for name, v in lat.items()},
        # from the actual send: the exchange's own response time, without our lateness
        "ack_from_send_us": summarize((ack_ns - sent)[measured & acked & (sent > 0)], keep_hdr=False),
        "sender_lateness_us": summarize(late, keep_hdr=False),
        "split_at_gateway_us": {name: summarize(v, keep_hdr=False) for name, v in split.items()},
        "loadgen": {
            "sends": int(rec["sends"]),
            "order_recvs": int(rec["order_recvs"]),
            "md_recvs": int(rec["md_recvs"]),
            "wake_ups": int(rec["waits"]),
            "cpu_s_whole_step": round(int(rec["cpu_ns"]) / 1e9, 3),
            "stray_replies": int(rec["stray_replies"]),
            "unstamped_reads": int(rec["unstamped"]),
        },
    }


##########################################################################################
# tables
##########################################################################################


def _g(d: dict, key: str) -> str:
    v = d.get(key)
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _ratio(a: dict, b: dict, key: str) -> str:
    x, y = a.get(key), b.get(key)
    if not x or not y:
        return "-"
    return f"{x / y:.2f}"


def _ms(v) -> str:
    return "-" if v is None else f"{v / 1000:.2f}"


def compare_table(points: list[dict]) -> str:
    """One row per (mode, rate): ringex and the baseline, repeats merged, in ms; ratio
    is ringex / baseline (below 1: ringex faster)."""
    head = (
        "| mode | rate/s | accepted/s ringex / baseline | ack p50 ringex / baseline (ratio) | ack p99 ringex / baseline"
        " (ratio) | ack p99.9 ringex / baseline | trade p50 ringex / baseline (ratio) | trade p99 ringex / baseline"
        " (ratio) | p99 per repeat, ack ringex; baseline |\n"
    )
    head += "|" + "---|" * 9 + "\n"
    rows = []
    for p in points:
        rx, bl = p["designs"].get("ringex", {}), p["designs"].get("baseline", {})

        def pair(name, key, rx=rx, bl=bl, ratio=True):
            a, b = rx.get(name, {}), bl.get(name, {})
            text = f"{_ms(a.get(key))} / {_ms(b.get(key))}"
            return text + (f" ({_ratio(a, b, key)})" if ratio else "")

        def accepted(d):
            if not d:
                return "-"
            return f"{d['accepted_per_s']:,.0f}" + (" (sat.)" if d["saturated"] else "")

        def spread(d):
            return ", ".join(_ms(v) for v in d.get("ack_p99_per_repeat_us", [])) or "-"

        rows.append(
            f"| {p['durability']} | {p['rate']:,.0f} | {accepted(rx)} / {accepted(bl)} | {pair('ack', 'p50')} | "
            f"{pair('ack', 'p99')} | {pair('ack', 'p99.9', ratio=False)} | {pair('trade', 'p50')} | "
            f"{pair('trade', 'p99')} | {spread(rx)}; {spread(bl)} |"
        )
    return head + "\n".join(rows) + "\n"


def runs_table(steps: list[dict]) -> str:
    """Every run, in sweep order (µs)."""
    head = (
        "| mode | rate/s | design | run | accepted/s | ack p50 | p99 | p99.9 | max | from send p50 / p99 "
        "| trade p50 | p99 | p99.9 | max | trades | sender late p50 / p99 / max | CPU % exchange | CPU % loadgen | load |\n"
    )
    head += "|" + "---|" * 19 + "\n"
    rows = []
    for s in steps:
        a, t = s["latency_us"]["ack"], s["latency_us"]["trade"]
        late, fs = s["sender_lateness_us"], s["ack_from_send_us"]
        cpu = s.get("cpu_percent", {})
        exch = "/".join(f"{v:.0f}" for k, v in cpu.items() if k not in ("loadgen", "idle_other"))
        rows.append(
            f"| {s['durability']} | {s['rate']:,.0f} | {s['design']} | {s['repeat'] + 1} | "
            f"{s['accepted_per_s']:,.0f}{' (sat.)' if s['saturated'] else ''} | "
            + " | ".join(_g(a, k) for k in ("p50", "p99", "p99.9", "max"))
            + f" | {_g(fs, 'p50')} / {_g(fs, 'p99')} | "
            + " | ".join(_g(t, k) for k in ("p50", "p99", "p99.9", "max"))
            + f" | {t['count']:,} | {_g(late, 'p50')} / {_g(late, 'p99')} / {_g(late, 'max')} | {exch} | "
            f"{cpu.get('loadgen', 0):.1f} | {s['loadavg'][0]} |"
        )
    return head + "\n".join(rows) + "\n"


def breakdown_table(steps: list[dict]) -> str:
    """Where the time goes, per run of either design: latency split at the exchange's
    receive stamp (ringex's gateway, the baseline's loop), CPU per process and, for ringex
    with ``--ring-lag``, how far each ring consumer was behind."""
    stages = ("in.journaler", "in.matcher", "out.journaler", "out.notifier")
    roles = (GATEWAY, JOURNALER, matcher_role(0), NOTIFIER)
    head = "| mode | rate/s | design | run | to exchange p50/p99 | exchange→ack p50/p99 | exchange→trade p50/p99 "
    head += "| CPU %: ringex gw/jn/mt/nt, baseline | "
    head += " | ".join(f"{st} lag mean/max" for st in stages) + " |\n"
    head += "|" + "---|" * (8 + len(stages)) + "\n"
    rows = []
    for s in steps:
        split = s["split_at_gateway_us"]

        def pair(name, split=split):
            d = split.get(name, {})
            return f"{_g(d, 'p50')} / {_g(d, 'p99')}" if d.get("count") else "-"

        lag = s.get("ring_lag") or {}
        lags = " | ".join(f"{lag[st]['mean']:,.0f} / {lag[st]['max']:,}" if st in lag else "-" for st in stages)
        cpu = s.get("cpu_percent", {})
        mine = roles if s["design"] == "ringex" else [r for r in cpu if r not in ("loadgen", "idle_other")]
        rows.append(
            f"| {s['durability']} | {s['rate']:,.0f} | {s['design']} | {s['repeat'] + 1} | {pair('to_gateway')} | "
            f"{pair('gateway_to_ack')} | {pair('gateway_to_trade')} | "
            + "/".join(f"{cpu.get(r, 0):.0f}" for r in mine)
            + f" | {lags} |"
        )
    return head + "\n".join(rows) + "\n"


##########################################################################################
# plot
##########################################################################################

_COLORS = {"ringex": "tab:blue", "baseline": "tab:orange"}
_STYLES = {"p50": "-", "p99": "--", "p99.9": ":"}


def plot(points: list[dict], path) -> None:
    """Latency against offered rate, both designs on each panel: rows ack and trade
    print, columns the durability modes; p50 solid, p99 dashed, p99.9 dotted; log axes.
    A saturated point is drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("ack", "trade")
    modes = list(dict.fromkeys(p["durability"] for p in points))
    fig, axes = plt.subplots(len(kinds), max(1, len(modes)), figsize=(7 * max(1, len(modes)), 9), squeeze=False)
    for col, mode in enumerate(modes):
        mine = sorted((p for p in points if p["durability"] == mode), key=lambda p: p["rate"])
        for row, kind in enumerate(kinds):
            ax = axes[row][col]
            for design, color in _COLORS.items():
                for pct, style in _STYLES.items():
                    xs, ys, hollow = [], [], []
                    for p in mine:
                        d = p["designs"].get(design)
                        v = d and d.get(kind, {}).get(pct)
                        if v:
                            xs.append(p["rate"])
                            ys.append(v / 1000)
                            hollow.append(d["saturated"])
                    if not xs:
                        continue
                    ax.plot(xs, ys, style, color=color, label=f"{design} {pct}")
                    for x, y, h in zip(xs, ys, hollow, strict=True):
                        ax.plot([x], [y], "o", color=color, markerfacecolor="white" if h else color, markersize=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{mode}: order -> {'ack' if kind == 'ack' else 'trade print'}")
            ax.set_xlabel("offered orders/s")
            ax.set_ylabel("latency (ms)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8, ncol=2)
    fig.suptitle("ringex vs the single-process baseline (hollow: saturated)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def is_saturated(result: dict) -> bool:
    """The exchange did not keep up: a request never answered, under 90% of the offered
    rate accepted, or acks a second late at p99."""
    return bool(
        result["not_acked"] > 0
        or result["accepted_per_s"] < 0.9 * result["rate"]
        or result["latency_us"]["ack"].get("p99", 0) > 1_000_000
    )


def accepted_rate(result: dict) -> float:
    """Requests answered ``K`` (not rejected, e.g. THROTTLED) per second of the step."""
    return round((result["acked"] - sum(result["rejected"].values())) / result["seconds"], 1)
