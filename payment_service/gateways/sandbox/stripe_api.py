"""The sandbox's Stripe wire API (being written)."""

from flask import Blueprint

bp = Blueprint("sandbox_stripe", __name__)
