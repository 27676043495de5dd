"""The query API: JWT-protected, tenant-scoped, cached reads and HTTP ingestion."""
