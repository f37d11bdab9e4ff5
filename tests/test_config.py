import pytest

from ringex.config import Config, ConfigError, SymbolSpec, load_config


def test_embedded_defaults_list_the_demo_symbols():
    config = load_config(environ={})
    names = [s.name for s in config.symbols]
    assert {"ACME", "BOLT"} <= set(names)
    acme = config.symbol("ACME")
    assert (acme.tick, acme.price_min, acme.price_max) == (1, 1, 1_000_000)
    assert (config.order_port, config.md_port, config.ws_port, config.fix_port) == (7001, 7002, 7003, 7004)
    assert config.fix.enabled and config.fix.comp_id == "RINGEX"
    assert config.data_dir == "./ringex-data"
    assert config.durability == "fsync"
    assert config.wait_strategy == "blocking"


def test_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "ex.toml"
    path.write_text(
        'data_dir = "/tmp/x"\norder_port = 9001\ndurability = "async"\n'
        '[symbols.ZED]\ntick = 5\nprice_min = 5\nprice_max = 500\nstp = "cancel_both"\n'
    )
    config = load_config(path, environ={"RINGEX_ORDER_PORT": "9100"}, overrides={"md_port": 9200})
    assert config.data_dir == "/tmp/x"
    assert config.durability == "async"
    assert config.order_port == 9100
    assert config.md_port == 9200
    assert [s.name for s in config.symbols] == ["ZED"]
    assert config.symbol("ZED").levels == 100


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('durability = "sometimes"\n', "durability"),
        ("order_port = 70000\n", "order_port"),
        ("ring_capacity = 1000\n", "ring_capacity"),
        ("colour = 1\n", "colour"),
        ("[symbols.ACME]\ntick = 0\n", "symbols.ACME.tick"),
        ("[symbols.ACME]\nprice_min = 10\nprice_max = 5\n", "symbols.ACME.price_max"),
        ("[symbols.ACME]\ntick = 3\nprice_min = 1\nprice_max = 11\n", "symbols.ACME.price_max"),
        ('[symbols.ACME]\nstp = "maybe"\n', "symbols.ACME.stp"),
        ("[symbols.ACME]\nsize = 3\n", "symbols.ACME.size"),
        ("[symbols.WAYTOOLONGNAME]\n", "symbols.WAYTOOLONGNAME"),
        ("order_port = \n", "not valid TOML"),
        ("order_entry = 3\n", "order_entry"),
        ("[order_entry]\nrate = 5\n", "order_entry.rate"),
        ('[order_entry]\nmax_sessions = "many"\n', "order_entry.max_sessions"),
        ("[order_entry]\nburst = 0\n", "order_entry.burst"),
        ("[market_data]\nheartbeat_s = -1\n", "market_data.heartbeat_s"),
        ("[market_data]\nstats_out = 3\n", "market_data.stats_out"),
        ("[journal]\nmap_size = 1024\nmax_map_size = 512\n", "journal.max_map_size"),
        ("fix_port = -1\n", "fix_port"),
        ('[fix]\nenabled = "yes"\n', "fix.enabled"),
        ('[fix]\ncomp_id = "A=B"\n', "fix.comp_id"),
        ("[fix]\nlogon_timeout_s = 0\n", "fix.logon_timeout_s"),
    ],
)
def test_bad_config_names_the_key_and_the_problem(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(path, environ={})


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match="order_port"):
        load_config(environ={"RINGEX_ORDER_PORT": "seven"})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_symbol_listed_twice_is_refused():
    with pytest.raises(ConfigError, match="twice"):
        Config(symbols=(SymbolSpec("ACME"), SymbolSpec("ACME")))


def test_each_process_is_tuned_by_its_own_table(tmp_path):
    path = tmp_path / "tuned.toml"
    path.write_text("[order_entry]\nrate_per_s = 500\nmax_sessions = 3\n[market_data]\nheartbeat_s = 1\n")
    config = load_config(path, environ={})
    assert config.order_entry.rate_per_s == 500.0 and config.order_entry.max_sessions == 3
    assert config.order_entry.burst == Config().order_entry.burst  # what the file leaves out keeps its default
    assert config.market_data.heartbeat_s == 1.0 and config.journal == Config().journal


def test_the_example_config_loads():
    from pathlib import Path

    config = load_config(Path(__file__).parents[1] / "examples" / "ringex.toml", environ={})
    assert [s.name for s in config.symbols] == ["ACME", "BOLT"]
    assert config.symbol("BOLT").stp == "cancel_newest"
    # it documents every table's defaults: the ones it shows are the embedded ones
    assert config.order_entry == Config().order_entry and config.journal == Config().journal
    assert config.fix == Config().fix and config.fix_port == Config().fix_port
