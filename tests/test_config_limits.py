"""The ``[order_entry]`` and ``[market_data]`` tables and ``market_data_outage``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ringex.config import ConfigError, MarketDataSettings, OrderEntryLimits, load_config

EXAMPLE = Path(__file__).parents[1] / "examples" / "ringex.toml"


def test_the_tables_default_to_the_limits_the_gateway_and_notifier_use():
    config = load_config(environ={})
    assert config.order_entry == OrderEntryLimits()
    assert config.market_data == MarketDataSettings()
    assert config.market_data_outage == "continue"


def test_the_example_file_lists_every_limit_with_its_default():
    config = load_config(EXAMPLE, environ={})
    assert config.order_entry == OrderEntryLimits()
    assert config.market_data == MarketDataSettings()
    text = EXAMPLE.read_text()
    for kind in (OrderEntryLimits, MarketDataSettings):
        for f in dataclasses.fields(kind):
            assert f"\n{f.name} = " in text, f"examples/ringex.toml does not document {f.name}"


def test_a_table_sets_only_what_it_names(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(
        'market_data_outage = "halt"\n'
        "[order_entry]\nmax_sessions_per_address = 3\nrate_per_s = 50\n"
        "[market_data]\nhandshake_timeout_s = 0.5\nmax_connections = 7\n"
    )
    config = load_config(path, environ={"RINGEX_MARKET_DATA_OUTAGE": "continue"})
    assert config.market_data_outage == "continue"  # the environment wins over the file
    assert config.order_entry == dataclasses.replace(OrderEntryLimits(), max_sessions_per_address=3, rate_per_s=50)
    assert config.market_data == dataclasses.replace(MarketDataSettings(), handshake_timeout_s=0.5, max_connections=7)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[order_entry]\nmax_sessions = 0\n", "order_entry.max_sessions: must be a positive integer"),
        ("[order_entry]\nmax_garbage = -1\n", "order_entry.max_garbage: must be a non-negative integer"),
        ("[order_entry]\nrate_per_s = -5.0\n", "order_entry.rate_per_s: must be a positive number"),
        ("[order_entry]\nrate_per_s = inf\n", "order_entry.rate_per_s"),
        ("[order_entry]\nburst = 2.5\n", "order_entry.burst: must be a positive integer"),
        ("[order_entry]\nlogin_timeout_s = true\n", "order_entry.login_timeout_s"),
        ("[order_entry]\nspeed = 1\n", "order_entry.speed: unknown key"),
        ("order_entry = 1\n", "order_entry: must be a table"),
        ('[market_data]\nheartbeat_s = "soon"\n', "market_data.heartbeat_s: must be a positive number"),
        ("[market_data]\nmax_line_bytes = 0\n", "market_data.max_line_bytes"),
        ("[market_data]\nmax_connections_per_address = 1e3\n", "market_data.max_connections_per_address"),
        ('market_data_outage = "panic"\n', "market_data_outage: must be one of continue, halt"),
        ("data_dir = 5\n", "data_dir: must be a string"),
        ("shards = true\n", "shards: must be a positive integer"),
        (b"durability = '\xff'\n", "not valid TOML"),
        ("x = " + "[" * 3000 + "]" * 3000 + "\n", "not valid TOML"),
    ],
)
def test_a_bad_limit_names_its_table_key_and_problem(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert named in str(info.value)
