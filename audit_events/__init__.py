"""auditstream's shared core: event schema, codec, topics, cache keys, settings.

The three services (producers, stream_processor, query_api) import only this
package, never each other.
"""

from audit_events.schema import SCHEMA_VERSION, Actor, AuditEvent, Change, Context, Source, Target

__all__ = ["SCHEMA_VERSION", "Actor", "AuditEvent", "Change", "Context", "Source", "Target"]
