"""Access to the app's container from a request."""

from __future__ import annotations

from flask import current_app

from ..bootstrap import Container


def container() -> Container:
    c: Container = current_app.extensions["payment_service"]
    return c
