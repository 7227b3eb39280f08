"""WSGI entry point: `gunicorn wsgi:app` (what `payment-service serve` runs)."""

from payment_service.api import create_app

app = create_app()
