"""Background processes: the outbox relay (relay.py); the webhook applier and scheduled jobs as they land."""
