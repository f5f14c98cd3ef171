"""Fetch, format, start, probe and stop the local Kafka broker.

The broker runs detached (its own session) so it outlives the command that
started it; its pid and log live in the data directory.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from meterline.exceptions import ConfigurationError, MeterlineError
from meterline.settings import Settings, private_dir

READY_MARKER = ".complete"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    answering: bool


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ConfigurationError(f"`{tool}` was not found on PATH: {hint}")
    return path


def jars_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}"


def fetch_jars(settings: Settings) -> Path:
    """Copy the broker's jars from Maven Central into the cache (once per version)."""
    target = jars_dir(settings)
    if (target / READY_MARKER).exists():
        return target
    mvn = _require("mvn", "install Apache Maven (e.g. `apt-get install maven`) to fetch the Kafka jars")
    target.mkdir(parents=True, exist_ok=True)
    with resources.as_file(resources.files("meterline.stack") / "pom.xml") as pom:
        command = [
            mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={target}", f"-Dkafka.version={settings.kafka_version}", "-DincludeScope=runtime",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MeterlineError(f"Maven could not fetch Kafka {settings.kafka_version}:\n{result.stdout[-2000:]}")
    (target / READY_MARKER).touch()
    return target


def _server_properties(settings: Settings) -> str:
    host, port, controller = settings.kafka_host, settings.kafka_port, settings.kafka_controller_port
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={settings.kafka_data_dir / 'logs'}",
            f"num.partitions={settings.partitions}",
            # One node: internal topics cannot have more than one replica.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            f"group.initial.rebalance.delay.ms={settings.kafka_initial_rebalance_delay_ms}",
            "",
        ]
    )


def _new_cluster_id() -> str:
    # Kafka's cluster id is a base64url UUID; one starting with "-" would be read as an option.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _java_error(output: str) -> str:
    """The line of a Java tool's output that says what went wrong (its first exception), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "Exception" in line or "Error" in line:
            return line.split(": ", 1)[-1] if line.startswith("Exception in thread") else line
    return lines[-1] if lines else "no output"


def _pid_file(settings: Settings) -> Path:
    return settings.kafka_data_dir / "broker.pid"


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_pid(settings: Settings) -> int | None:
    """The broker's pid, if the process the pid file names is still that broker.

    A broker that crashed leaves its pid file; the pid may later be another process's. Ours runs
    with this data directory's server.properties on its command line, and started when the file
    says (a file written before the start time was kept has only the pid). Otherwise the file is
    stale: it is removed, and nothing is ever signalled on its word.
    """
    path = _pid_file(settings)
    try:
        pid_text, _, started = path.read_text().partition(" ")
        pid = int(pid_text)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        command = []
    properties = str(settings.kafka_data_dir / "server.properties").encode()
    if properties in command and (not started.strip() or _start_time(pid) == started.strip()):
        return pid
    path.unlink(missing_ok=True)
    return None


def broker_answers(settings: Settings, timeout: float = 2.0) -> bool:
    """Whether the broker answers a metadata request within `timeout` seconds."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout).brokers)
    except KafkaException:
        return False


def broker_status(settings: Settings) -> BrokerStatus:
    pid = _read_pid(settings)
    return BrokerStatus(pid is not None, pid, settings.kafka_bootstrap, broker_answers(settings, 1.0))


def stack_up(settings: Settings, wait_seconds: float = 90.0) -> BrokerStatus:
    """Start the broker if it is not running, wait until it answers and gives producer ids, create our topics."""
    # A broker already answering on the port (ours from another home, or a user's) is used as is.
    started = settings.bootstrap is None and _read_pid(settings) is None and not broker_answers(settings, 1.0)
    if started:
        _start_broker(settings)
    deadline = time.monotonic() + wait_seconds
    while not broker_answers(settings):
        if time.monotonic() > deadline:
            log = settings.kafka_data_dir / "broker.log"
            raise MeterlineError(f"Kafka did not answer on {settings.kafka_bootstrap} within {wait_seconds}s; see {log}")
        time.sleep(0.5)
    ensure_topics(settings)
    if started:
        _load_producer_id_coordinator(settings, deadline - time.monotonic())
    return broker_status(settings)


def _load_producer_id_coordinator(settings: Settings, timeout: float) -> None:
    # A broker just started has no block of producer ids yet (and, when fresh, no transaction log):
    # meanwhile librdkafka prints "Coordinator load in progress" for every idempotent producer.
    # A silent producer with a transactional id never used before needs a new producer id, so it
    # makes the broker fetch a block now, and waits until it is answered.
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap,
                         "transactional.id": f"meterline-stack-up-{uuid.uuid4().hex}", "log_level": 0})
    try:
        producer.init_transactions(max(timeout, 1.0))
    except KafkaException as error:
        raise MeterlineError(f"Kafka on {settings.kafka_bootstrap} gives no producer ids: {error}") from error


def _start_broker(settings: Settings) -> None:
    if settings.kafka_port == settings.kafka_controller_port:
        raise ConfigurationError(f"kafka_port and kafka_controller_port are both {settings.kafka_port}: "
                                 "the broker's two listeners need two ports")
    java = _require("java", "install a JDK >= 17 (e.g. `apt-get install openjdk-17-jre-headless`)")
    jars = fetch_jars(settings)
    data = settings.kafka_data_dir
    private_dir(data)
    properties = data / "server.properties"
    properties.write_text(_server_properties(settings))
    classpath = f"{jars}/*"
    if not (data / "logs" / "meta.properties").exists():
        cluster_id = _new_cluster_id()
        formatted = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)],
            capture_output=True, text=True,
        )
        if formatted.returncode != 0:
            reason = _java_error(formatted.stderr or formatted.stdout)
            raise MeterlineError(f"Kafka could not format its storage in {data}: {reason}")
    # The broker needs none of our settings (its own are in server.properties); the API secret and
    # the warehouse URL must not sit in its environment, which /proc/PID/environ shows.
    env = {name: value for name, value in os.environ.items() if not name.startswith("METERLINE_")}
    with open(data / "broker.log", "ab") as log:
        process = subprocess.Popen(
            [java, f"-Xmx{settings.kafka_heap}", "-XX:+UseG1GC", "-cp", classpath, "kafka.Kafka", str(properties)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    _pid_file(settings).write_text(f"{process.pid} {_start_time(process.pid)}")


def stack_down(settings: Settings, wait_seconds: float = 30.0) -> bool:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after `wait_seconds`). True if one was running."""
    pid = _read_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    _pid_file(settings).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    # When this process started the broker it is our child: collect it so it does not linger as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# A dead letter is the original record (up to the broker's 1 MiB) plus its reason in headers.
DEAD_LETTER_MAX_BYTES = 2 * 1024 * 1024


USAGE_RETENTION_MARGIN_SECONDS = 7 * 86_400


# Kafka compacts only closed segments. With its 1 GiB default a changelog's live segment held
# millions of a busy worker's state writes, every one read back by a restart (Faust's recovery
# reads ~9,000 records/s here: `python -m meterline.benchmarks scale`). A segment closes at
# 2 MiB (~7,000 state records) or after an hour, so a restart reads about the latest record per
# key plus that tail of each partition.
COMPACTED_TOPIC = {"cleanup.policy": "compact", "segment.bytes": str(2 * 2**20), "segment.ms": str(3_600_000)}


def ensure_topics(settings: Settings, compacted: tuple[str, ...] = ()) -> None:
    """Create the usage, rated and dead-letter topics, and any `compacted` ones, if missing (idempotent).

    Every topic gets `settings.partitions` partitions; `compacted` ones keep the latest value per key.
    """
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    existing = admin.list_topics(timeout=10).topics
    configs: dict[str, dict[str, str]] = {
        # Kept past the dedupe window: a correction reads back the event it corrects (processors/README.md).
        settings.usage_topic: {"retention.ms": str(int((settings.dedupe_window_seconds + USAGE_RETENTION_MARGIN_SECONDS) * 1000))},
        settings.rated_topic: {},
        settings.dead_letter_topic: {"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)},
        settings.alerts_topic: {},
        settings.pool_usage_topic: {},
        settings.decisions_topic: {},
        **{name: COMPACTED_TOPIC for name in compacted},
    }
    names = list(configs)
    wanted = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=1, config=config)
        for name, config in configs.items()
        if name not in existing
    ]
    for future in (admin.create_topics(wanted).values() if wanted else []):
        try:
            future.result(timeout=30)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another process won the race
                raise
    _wait_for_leaders(admin, names)


def _wait_for_leaders(admin: AdminClient, topics: list[str], timeout: float = 30.0) -> None:
    # A new topic exists before its partitions have leaders; producing then fails.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=10).topics
        if all(
            name in metadata and metadata[name].partitions and all(p.leader >= 0 for p in metadata[name].partitions.values())
            for name in topics
        ):
            return
        time.sleep(0.2)
    raise MeterlineError(f"topics {topics} have no leader after {timeout}s")


# Below Linux's default ephemeral range (32768-60999): a port the kernel hands out is also the
# local end of outgoing connections, so one chosen there was seen taken by a client socket (the
# broker's own, librdkafka's) between the choice and the worker's bind.
FREE_PORTS = range(20_000, 32_000)


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on the loopback interface that nothing uses right now, outside the ephemeral range,
    and never one this process was given before: two ports asked for in a row are both still free,
    so without that memory a broker could be given the same port for its two listeners."""
    for port in random.sample(FREE_PORTS, 200):
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise MeterlineError(f"no free TCP port between {FREE_PORTS.start} and {FREE_PORTS.stop - 1} on 127.0.0.1")


def produce_and_wait(settings: Settings, topic: str, records: list[tuple[bytes, bytes]], timeout: float = 30.0) -> None:
    """Write (key, value) records to `topic`, each key to the partition the SDK would choose; return
    once Kafka acknowledged them all (MeterlineError otherwise)."""
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                         "partitioner": "murmur2_random", "on_delivery": delivered})
    for key, value in records:
        producer.produce(topic, value, key)
    left = producer.flush(timeout)
    if left or failures:
        raise MeterlineError(f"Kafka did not acknowledge {left or len(failures)} record(s) on {topic}: {failures[:3]}")
