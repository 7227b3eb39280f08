"""The domain: state machines, money, errors and events. Standard library only."""
