"""Measurement and demo tooling, kept whole and above the runtime: it may import everything, nothing imports it.

Generated demo scenes and the ``make run`` demo, the evaluation on real photographs
(``tagstream eval``), the benchmark against the reference service's strategy (``tagstream
bench``) and that strategy itself.
"""
