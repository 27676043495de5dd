"""The stream processor: Kafka → validate → MongoDB → cache invalidation → commit."""
