"""Apache Kafka for the tests: assembled from Maven Central, KRaft mode, JVMs on loopback.

What ``bin/kafka-storage.sh format`` and ``bin/kafka-server-start.sh`` do, without a release
tarball (Maven Central is reachable where the tests run, the Apache download site is not): the
jars of ``org.apache.kafka:kafka_2.13`` and its runtime dependencies are copied by Maven from the
pom in ``apache-kafka/`` into ``~/.cache/tagstream/apache-kafka-VERSION`` once, every storage
directory is formatted before its first start, and each node runs ``kafka.Kafka`` as a combined
broker and controller with a small heap. Unlike the embedded Tansu, a node keeps its data on
disk, so it can be killed and restarted on the same directory, and nodes form a cluster.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from types import TracebackType

from streams.broker import BrokerProcess, free_port

POM = Path(__file__).resolve().parent / "apache-kafka" / "pom.xml"
KAFKA_VERSION = "4.4.0"


def java_and_maven() -> bool:
    return shutil.which("java") is not None and shutil.which("mvn") is not None


def kafka_classpath(cache_root: Path | None = None) -> str:
    """The broker's class path, resolving the jars through Maven on first use (about 15 s)."""
    root = cache_root or Path.home() / ".cache" / "tagstream"
    libs = root / f"apache-kafka-{KAFKA_VERSION}" / "libs"
    complete = libs / ".complete"
    if not complete.exists():
        libs.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(POM),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            check=True,
        )
        complete.touch()
    return str(libs / "*")


def cluster_id() -> str:
    """A Kafka cluster id: a UUID in URL-safe base64 without padding (``kafka-storage.sh random-uuid``).

    One id in 64 would start with ``-``, and ``kafka-storage format -t -xyz`` reads that as an
    option and fails; Kafka's own ``Uuid.randomUuid`` draws again in that case, and so does this.
    """
    while True:
        drawn = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not drawn.startswith("-"):
            return drawn


class ApacheKafkaBroker(BrokerProcess):
    """One Kafka node (broker + controller) on ``127.0.0.1:port``, data in ``data_dir``; a context manager.

    A single node is its own quorum. For a cluster, give every node the same ``voters``
    (``{node_id: controller_port}``) and ``cluster``, and start them together: a node's start
    waits for its listener only, since a quorum needs the others. Killed or stopped, a node keeps
    its data: :meth:`start` again restarts it on the same directory and ports.
    """

    stop_grace_s = 30.0  # a controlled shutdown moves leadership away first

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: dict[int, int] | None = None,
        cluster: str | None = None,
        replication: int = 1,
    ) -> None:
        super().__init__(port, log_path or data_dir.parent / f"kafka-{node_id}.log")
        self.data_dir = data_dir
        self.controller_port = controller_port or free_port()
        self.node_id = node_id
        self._voters = voters or {node_id: self.controller_port}
        self._cluster = cluster or cluster_id()
        self._replication = replication

    def _properties(self) -> Path:
        voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in sorted(self._voters.items()))
        replication = self._replication
        lines = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data_dir,
            "num.partitions": 1,
            "default.replication.factor": replication,
            "min.insync.replicas": min(2, replication),
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min(2, replication),
            # Tests start consumers one after another; a group must not wait 3 s for more members.
            "group.initial.rebalance.delay.ms": 0,
        }
        path = self.data_dir.parent / f"server-{self.node_id}.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        return path

    def start(self, timeout_s: float = 90.0) -> ApacheKafkaBroker:
        classpath = kafka_classpath()
        properties = self._properties()
        java = ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-cp", classpath]
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", "-t", self._cluster, "-c", str(properties)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        self._launch([*java, "kafka.Kafka", str(properties)], timeout_s)
        return self


class ApacheKafkaCluster:
    """``size`` Kafka nodes, each broker and controller of one KRaft quorum, on loopback; a context manager.

    Internal topics and new topics are replicated to every node with ``min.insync.replicas=2``,
    so a producer with ``acks=all`` keeps writing while one node is down.
    """

    def __init__(self, directory: Path, size: int = 3) -> None:
        controllers = {node: free_port() for node in range(1, size + 1)}
        cluster = cluster_id()
        self.nodes = [
            ApacheKafkaBroker(
                directory / f"node-{node}",
                log_path=directory / f"kafka-{node}.log",
                node_id=node,
                controller_port=port,
                voters=controllers,
                cluster=cluster,
                replication=size,
            )
            for node, port in controllers.items()
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def url(self) -> str:
        """Faust-style URL naming every node, so clients bootstrap from whichever is up."""
        return "kafka://" + ";".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> ApacheKafkaBroker:
        return next(node for node in self.nodes if node.node_id == node_id)

    def start(self) -> ApacheKafkaCluster:
        """All nodes at once: a node's broker side waits for the controller quorum, which needs the others."""
        errors: list[BaseException] = []

        def start(node: ApacheKafkaBroker) -> None:
            try:
                node.start()
            except BaseException as error:  # reported below, after every thread ended
                errors.append(error)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ApacheKafkaCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
