"""Kafka -> ClickHouse: raw usage events for billing aggregation and outlier queries."""

from meterline.sinks.clickhouse_sink import ClickHouseSink
from meterline.sinks.warehouse import Warehouse

__all__ = ["ClickHouseSink", "Warehouse"]
