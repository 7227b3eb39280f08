"""The sandbox's Razorpay wire API (being written)."""

from flask import Blueprint

bp = Blueprint("sandbox_razorpay", __name__)
