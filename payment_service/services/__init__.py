"""Use cases. They take plain values and an abstract unit of work; no Flask, SQLAlchemy, SDK or Kafka."""
