"""Performance benchmarks; ``make bench`` runs them all and rewrites their pages in docs/.

Each harness module measures and has the command line (``squeeze_scoring``,
``worker_throughput``, ``drift_cost``); it fills the results structure of its
``*_results`` module, which its ``*_report`` module renders as a markdown page. They
measure and report; they assert nothing, and are not part of the test suite.
"""
