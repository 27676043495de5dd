"""The ``auditstream`` command line: a thin layer over the core and the services."""
