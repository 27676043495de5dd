"""Outbound log streams (issue 17): deliver each tenant's stored events to its destinations.

``worker.Streamer`` reads stored events by (tenant, seq) from MongoDB and
delivers them per destination (``formats``), with its own position, retries and
dead-letter list per destination. See docs/streams.md.
"""
