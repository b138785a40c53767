"""The cluster ids the Apache Kafka harness formats storage with.

A CI run failed once because ``kafka-storage format -t -fbaB8...`` read the id as an option: one
random id in 64 starts with ``-``.
"""

from __future__ import annotations

import base64

from support.apache_kafka import cluster_id


def test_cluster_ids_never_start_with_a_dash_and_are_16_byte_uuids() -> None:
    drawn = [cluster_id() for _ in range(4096)]
    assert not [value for value in drawn if value.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(value + "==")) == 16 for value in drawn)
    assert len(set(drawn)) == len(drawn)
