"""Run a command of ours as a real process and wait, with a deadline, until it answers over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

VENV_BIN = Path(sys.executable).parent


class ServiceProcess:
    def __init__(self, args: list[str], env: dict[str, str], cwd: str | Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(
            args, env=full_env, cwd=str(cwd), stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_http(self, url: str, status: int = 200, timeout: float = 60.0) -> requests.Response:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                resp = requests.get(url, timeout=5)
                if resp.status_code == status:
                    return resp
                last = f"{resp.status_code} {resp.text[:300]}"
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"{url} did not answer {status} in {timeout}s (last: {last}):\n{self.output()[-3000:]}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)
