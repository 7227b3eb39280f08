"""Edges to storage and messaging: SQLAlchemy tables and repositories, unit of work, outbox, Kafka."""
