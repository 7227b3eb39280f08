"""Real infrastructure for tests and local runs: a private MariaDB server and a Tansu (Kafka) broker.

Nothing here is used in production. ``python -m localparts up`` starts both by hand.
"""

from localparts.broker import BrokerUnavailable, TansuBroker
from localparts.mariadb import (
    MariaDBServer,
    MariaDBUnavailable,
    create_database_at,
    drop_database_at,
)

__all__ = [
    "BrokerUnavailable",
    "MariaDBServer",
    "MariaDBUnavailable",
    "TansuBroker",
    "create_database_at",
    "drop_database_at",
]
