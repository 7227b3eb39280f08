"""The 3-D Secure challenge page both gateways' sandboxes show, with Approve and Fail buttons."""

from __future__ import annotations

from html import escape

from flask import Response

CHALLENGE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>3-D Secure test authentication</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
.amount{{font-size:1.6rem;margin:1rem 0}} button{{font-size:1.1rem;padding:.6rem 1.4rem;margin-right:1rem}}
.ok{{background:#1a7f37;color:#fff;border:0}} .fail{{background:#cf222e;color:#fff;border:0}}</style></head>
<body><h1>{gateway} test 3-D Secure</h1>
<p>This is the gateway sandbox's test authentication page. No real bank is involved.</p>
<p class="amount" id="amount">{amount}</p>
<p>Card ending <b id="last4">{last4}</b> &middot; ref <code>{payment_id}</code></p>
<form method="post" action="{action}">
<button class="ok" type="submit" name="result" value="approve" id="approve">Complete authentication</button>
<button class="fail" type="submit" name="result" value="fail" id="fail">Fail authentication</button>
</form></body></html>"""


def render_challenge(gateway: str, amount: str, last4: str, payment_id: str, action: str) -> Response:

    html = CHALLENGE_PAGE.format(
        gateway=escape(gateway), amount=escape(amount), last4=escape(last4),
        payment_id=escape(payment_id), action=escape(action),
    )
    return Response(html, mimetype="text/html")
