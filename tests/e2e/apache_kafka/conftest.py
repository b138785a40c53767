"""Tests that need what only Apache Kafka offers: many partitions and workers, a broker restarted
on its data, a cluster that elects a new leader.

They are collected on the Apache Kafka pass only (``TAGSTREAM_TEST_BROKER=kafka``, ``make
test-kafka``, which ``.ci/run`` runs after the default suite): the embedded Tansu keeps no data
over a restart and has no cluster. That pass fails, never skips, where Java or Maven is missing.
"""

from __future__ import annotations

from support.brokers import engine

collect_ignore_glob = [] if engine() == "kafka" else ["test_*.py"]
