"""A real single-node KRaft Kafka broker, from Maven Central jars, run with `java`."""

from meterline.stack.broker import (
    BrokerStatus, broker_answers, broker_status, ensure_topics, fetch_jars, free_port, produce_and_wait, stack_down, stack_up,
)

__all__ = ["BrokerStatus", "broker_answers", "broker_status", "ensure_topics", "fetch_jars", "free_port", "produce_and_wait", "stack_down", "stack_up"]
