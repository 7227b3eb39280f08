"""Fuzzing the running service from its own OpenAPI document (schemathesis, every check).

`payment-service serve` on MariaDB, with a user token and a service client holding every scope;
schemathesis (every check is on by default; the CLI is given none, so the per-operation settings
below apply) generates requests from /openapi.json (examples, coverage, fuzzing and stateful
phases) and checks each answer against the document: no 5xx, documented status codes, content
types and headers, response bodies matching their schemas, bad input refused, good input accepted,
auth not ignored. Rate limits are raised for the run. It must find nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import VENV_BIN

from .conftest import REPO, start_api, user_token

pytestmark = pytest.mark.e2e

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "120"))
SCOPES = ["payments:read", "payments:refund", "withdrawals:write", "withdrawals:read", "audit:read"]

CONFIG = """
[auth.openapi.userJwt]
bearer = "${FUZZ_USER_TOKEN}"

[auth.openapi.apiKey]
api_key = "${FUZZ_API_KEY}"

# Lists: a cursor is opaque (the next_cursor of the page before); the fuzzer cannot make one that
# decodes, and a made-up one is refused (422, field cursor), as documented. (The other lists, of
# refunds and withdrawals, share their path with a money-moving POST: the block below covers them.)
[[operations]]
include-path-regex = "^/(payments|audit-events)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 422, 429]

# Money-moving requests: a decline (402) and refusals no schema can express (a token the gateway
# does not know, an amount under the gateway's minimum, the fraud pre-check, more than was
# captured, a payout the gateway refuses) are documented answers, not bugs.
[[operations]]
include-path-regex = "^/(payments/topup|payment-methods|payments/[{]payment_id[}]/refunds|withdrawals)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 402, 403, 404, 409, 422, 429]

# Webhooks: a body the document allows still needs the gateway's HMAC over it, which a fuzzer
# cannot compute; every generated delivery is (rightly) refused with 400.
[[operations]]
include-path-regex = "^/webhooks/"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def fuzz_api(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    env = {**os.environ, **api_env}
    scopes = [a for s in SCOPES for a in ("--scope", s)]
    created = subprocess.run(  # noqa: S603 - our own CLI
        [str(VENV_BIN / "payment-service"), "clients", "create", "fuzzer", *scopes],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    if created.returncode != 0 and "audit:read" in created.stderr:  # before the audit scope exists
        scopes = [a for s in SCOPES if s != "audit:read" for a in ("--scope", s)]
        created = subprocess.run(  # noqa: S603
            [str(VENV_BIN / "payment-service"), "clients", "create", "fuzzer", *scopes],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    proc, url = start_api(api_env, tmp_path_factory.mktemp("fuzz"))
    try:
        yield url, key
    finally:
        proc.stop()


def test_schemathesis_finds_nothing(fuzz_api: tuple[str, str], tmp_path: Path) -> None:
    url, key = fuzz_api
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "FUZZ_USER_TOKEN": user_token("u_fuzzer", exp_in=3600), "FUZZ_API_KEY": key}
    cmd = [
        str(VENV_BIN / "st"), "--no-color", "--config-file", str(config), "run", f"{url}/openapi.json",
        "--workers", "2", "--max-time", str(FUZZ_SECONDS), "--request-timeout", "20",
        "--suppress-health-check", "all", "--seed", "20261202",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 600)  # noqa: S603
    report = out.stdout + out.stderr
    log = REPO / "build" / "fuzz" / "schemathesis.log"  # build/ is git-ignored; kept after the run
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(report)
    summary = "\n".join(report.splitlines()[-60:])
    assert out.returncode == 0, f"schemathesis found problems (full log {log}):\n{summary}"
    assert re.search(r"\b\d+ (passed|generated)", report) or "passed" in report.lower(), summary
