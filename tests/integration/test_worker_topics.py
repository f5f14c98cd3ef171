"""The worker's topics exist, with the right shape, before Faust starts."""

from confluent_kafka.admin import AdminClient, ConfigResource

from meterline.processors.app import TABLES, changelog_topic
from meterline.processors.worker import prepare_topics


def test_changelogs_are_created_compacted_in_small_segments_with_the_source_partition_count(make_settings):
    settings = make_settings()
    prepare_topics(settings)
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert TABLES == ("user-state", "remembered-ids", "holds")
    for table in TABLES:
        name = changelog_topic(settings, table)
        assert len(topics[name].partitions) == len(topics[settings.usage_topic].partitions) == settings.partitions
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        config = admin.describe_configs([resource])[resource].result(timeout=10)
        assert config["cleanup.policy"].value == "compact"
        # Only closed segments are compacted, and a restart reads the rest whole.
        assert int(config["segment.bytes"].value) <= 2 * 2**20 and int(config["segment.ms"].value) <= 3_600_000
