"""Benchmarks and the end-to-end latency harness of ringex (outside the package: a
checkout has them, an installed ringex does not).

Scripts (each prints its figures and writes JSON to ``perf/results/``):
``matcher_bench.py``, ``ring_bench.py``, ``journal_bench.py``, ``gateway_bench.py``,
``notifier_bench.py`` and ``e2e.py``, the end-to-end compare sweep of ringex against
``baseline_exchange.py``. The harness behind ``e2e.py`` (and ``ringex bench``):

- ``workload``: the seeded open-loop order flow;
- ``loadgen`` (+ ``loadgen.c``): the compiled load generator that sends it and records
  acks and market data receipt times;
- ``targets``: the exchanges under test, started as subprocesses;
- ``analysis``: latencies, percentiles, tables and the plot.
"""
