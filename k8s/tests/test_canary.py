#!/usr/bin/env python3
"""Tests of scripts/canary.sh and its gate (scripts/canary_gate.py), run by `make deploy-check`.

Prometheus is faked by a small HTTP server speaking its HTTP API (GET /api/v1/query with the
JSON envelope {"status": "success", "data": {"resultType": "vector", "result": [...]}}); helm by
a script on PATH that logs its arguments. Each rollout test checks the exact helm upgrades made.
Standard library only.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CANARY = ROOT / "scripts" / "canary.sh"

HEALTHY = {"canary_calls": 1200.0, "canary_error_ratio": 0.001, "stable_error_ratio": 0.001,
           "canary_p95_seconds": 0.080, "stable_p95_seconds": 0.075}


class FakePrometheus:
    """Answers each gate query from `rounds`: one dict of values per gate evaluation (the last
    one repeats). A value of None is an empty result, as Prometheus gives for no data."""

    def __init__(self) -> None:
        self.rounds: list[dict] = [HEALTHY]
        self.round = -1
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urllib.parse.urlparse(self.path)
                if url.path != "/api/v1/query":
                    self.send_error(404)
                    return
                promql = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                body = fake.answer(promql)
                data = json.dumps(body).encode()
                self.send_response(200 if body["status"] == "success" else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, promql: str) -> dict:
        self.queries.append(promql)
        track = "canary" if 'track="canary"' in promql else "stable"
        if "increase(grpc_server_handled_total" in promql:
            name = "canary_calls"
            self.round += 1  # the first query of every gate evaluation
        elif "histogram_quantile(0.95" in promql and "grpc_server_handling_seconds_bucket" in promql:
            name = f"{track}_p95_seconds"
        elif "grpc_code=~" in promql and "grpc_server_handled_total" in promql:
            name = f"{track}_error_ratio"
        else:
            return {"status": "error", "errorType": "bad_data", "error": f"unexpected query {promql}"}
        values = self.rounds[min(max(self.round, 0), len(self.rounds) - 1)]
        value = values.get(name)
        result = [] if value is None else [{"metric": {}, "value": [1700000000.0, repr(float(value))]}]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CanaryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.prom = FakePrometheus()
        self.tmp = tempfile.TemporaryDirectory()
        tmp = Path(self.tmp.name)
        self.helm_log = tmp / "helm.log"
        helm = tmp / "bin" / "helm"
        helm.parent.mkdir()
        # The fake helm: logs one line per call; `get values` answers like a release with a canary
        # tag; FAKE_HELM_FAIL makes an upgrade whose arguments contain it fail.
        helm.write_text(
            "#!/usr/bin/env bash\n"
            'printf "%s\\n" "$*" >>"$FAKE_HELM_LOG"\n'
            'if [[ $1 == get ]]; then echo \'{"canary":{"enabled":true,"image":{"tag":"from-release"}}}\'; exit 0; fi\n'
            'if [[ -n ${FAKE_HELM_FAIL:-} && "$*" == *"$FAKE_HELM_FAIL"* ]]; then echo "Error: timed out" >&2; exit 1; fi\n'
        )
        helm.chmod(helm.stat().st_mode | stat.S_IXUSR)
        self.env = dict(os.environ, PATH=f"{helm.parent}:{os.environ['PATH']}", FAKE_HELM_LOG=str(self.helm_log))
        self.env.pop("PROMETHEUS_URL", None)

    def tearDown(self) -> None:
        self.prom.close()
        self.tmp.cleanup()

    def canary(self, *args: str, fail: str = "") -> subprocess.CompletedProcess:
        env = dict(self.env, FAKE_HELM_FAIL=fail)
        return subprocess.run(["bash", str(CANARY), "--prometheus-url", self.prom.url, "--bake", "0",
                               "--namespace", "prod", *args],
                              capture_output=True, text=True, env=env, timeout=60)

    def helm_calls(self) -> list[str]:
        return self.helm_log.read_text().splitlines() if self.helm_log.exists() else []

    def upgrades(self) -> list[str]:
        """The --set parts of each helm upgrade, in order."""
        out = []
        for call in self.helm_calls():
            if call.startswith("upgrade "):
                self.assertRegex(call, r"(^| )--(reuse-values|reset-then-reuse-values)( |$)")
                self.assertIn("--wait", call)
                self.assertIn("--namespace prod", call)
                words = call.split()
                out.append(" ".join(words[i + 1] for i, w in enumerate(words) if w in ("--set", "--set-string")))
        return out

    # --- the gate alone
    def test_gate_passes_when_canary_is_like_stable(self) -> None:
        r = self.canary("--gate-only")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("canary gate: PASS", r.stdout)
        self.assertEqual(len(self.prom.queries), 5)
        self.assertTrue(all('namespace="prod"' in q and 'grpc_service="tollgate.v1.Router"' in q
                            for q in self.prom.queries), self.prom.queries)

    def test_gate_fails_on_error_ratio_above_the_limit(self) -> None:
        self.prom.rounds = [dict(HEALTHY, canary_error_ratio=0.03, stable_error_ratio=0.025)]
        r = self.canary("--gate-only", "--max-error-increase", "0.1")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("--max-error-ratio 0.01", r.stdout)

    def test_gate_fails_on_error_ratio_above_stable(self) -> None:
        self.prom.rounds = [dict(HEALTHY, canary_error_ratio=0.008, stable_error_ratio=0.001)]
        r = self.canary("--gate-only")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("exceeds stable's", r.stdout)
        # The same numbers pass with a looser flag: the threshold is the flag's.
        self.assertEqual(self.canary("--gate-only", "--max-error-increase", "0.01").returncode, 0)

    def test_gate_fails_on_p95_against_stable_and_absolute(self) -> None:
        self.prom.rounds = [dict(HEALTHY, canary_p95_seconds=0.200, stable_p95_seconds=0.100)]
        r = self.canary("--gate-only")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("--max-p95-ratio 1.2", r.stdout)
        self.assertEqual(self.canary("--gate-only", "--max-p95-ratio", "2.5").returncode, 0)
        r = self.canary("--gate-only", "--max-p95-ratio", "2.5", "--max-p95-seconds", "0.15")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("--max-p95-seconds 0.15", r.stdout)

    def test_gate_fails_with_too_few_canary_calls(self) -> None:
        self.prom.rounds = [dict(HEALTHY, canary_calls=12)]
        r = self.canary("--gate-only")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("too few to judge", r.stdout)
        self.assertEqual(self.canary("--gate-only", "--min-requests", "10").returncode, 0)

    def test_gate_without_stable_traffic_uses_absolute_limits(self) -> None:
        self.prom.rounds = [dict(HEALTHY, stable_error_ratio=None, stable_p95_seconds=None)]
        r = self.canary("--gate-only")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("comparisons with stable skipped", r.stdout)

    def test_gate_fails_when_prometheus_does_not_answer(self) -> None:
        self.prom.close()
        r = self.canary("--gate-only")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("Prometheus did not answer", r.stderr)
        self.prom = FakePrometheus()  # for tearDown

    # --- the rollout
    def test_rollout_promotes_through_10_50_100(self) -> None:
        r = self.canary("--tag", "1.3.0")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.upgrades(), [
            "canary.enabled=true canary.image.tag=1.3.0 canary.weight=10",
            "canary.enabled=true canary.image.tag=1.3.0 canary.weight=50",
            "canary.enabled=true canary.image.tag=1.3.0 canary.weight=100",
            "image.tag=1.3.0",
            "canary.enabled=false canary.weight=0",
        ])
        self.assertEqual(r.stdout.count("canary gate: PASS"), 3)

    def test_rollout_rolls_back_to_weight_0_when_the_gate_fails_at_50(self) -> None:
        bad = dict(HEALTHY, canary_error_ratio=0.2)
        self.prom.rounds = [HEALTHY, bad]
        r = self.canary("--tag", "1.3.0")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(self.upgrades(), [
            "canary.enabled=true canary.image.tag=1.3.0 canary.weight=10",
            "canary.enabled=true canary.image.tag=1.3.0 canary.weight=50",
            "canary.weight=0",
        ])
        self.assertIn("ROLLBACK: gate failed at weight 50", r.stderr)

    def test_rollout_rolls_back_when_prometheus_is_gone(self) -> None:
        self.prom.rounds = [HEALTHY]
        self.prom.close()
        r = self.canary("--tag", "1.3.0")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(self.upgrades()[-1], "canary.weight=0")
        self.prom = FakePrometheus()

    def test_rollout_rolls_back_when_the_upgrade_fails(self) -> None:
        r = self.canary("--tag", "1.3.0", fail="canary.weight=50")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(self.upgrades()[-1], "canary.weight=0")
        self.assertIn("helm upgrade to weight 50 failed", r.stderr)

    def test_rollout_exits_3_when_the_rollback_fails_too(self) -> None:
        self.prom.rounds = [dict(HEALTHY, canary_error_ratio=0.5)]
        r = self.canary("--tag", "1.3.0", fail="canary.weight=0")
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)

    def test_rollout_reads_the_tag_from_the_release(self) -> None:
        r = self.canary("--steps", "25")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(self.helm_calls()[0].startswith("get values tollgate"), self.helm_calls())
        self.assertEqual(self.upgrades(), ["canary.enabled=true canary.weight=25"])
        self.assertIn("not promoting", r.stderr)

    def test_reset_then_reuse_values_replaces_reuse_values(self) -> None:
        r = self.canary("--tag", "1.3.0", "--steps", "10", "--reset-then-reuse-values")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        upgrades = [c for c in self.helm_calls() if c.startswith("upgrade ")]
        self.assertEqual(len(upgrades), 1)
        self.assertIn(" --reset-then-reuse-values ", upgrades[0])
        self.assertNotIn(" --reuse-values ", upgrades[0])

    def test_dry_run_prints_the_plan_and_changes_nothing(self) -> None:
        r = subprocess.run(["bash", str(CANARY), "--dry-run", "--tag", "1.3.0", "--namespace", "prod"],
                           capture_output=True, text=True, env=self.env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.helm_calls(), [])
        self.assertEqual(self.prom.queries, [])
        for w in (10, 50, 100):
            self.assertIn(f"--set canary.weight={w}", r.stderr)
        self.assertIn("--set-string image.tag=1.3.0", r.stderr)
        self.assertIn("--set canary.enabled=false --set canary.weight=0", r.stderr)
        self.assertIn("histogram_quantile(0.95", r.stderr)

    def test_bad_arguments_are_usage_errors(self) -> None:
        for args in (["--steps", "10 150"], ["--steps", "50 10"], ["--tag", "bad tag"], ["--bogus"]):
            r = self.canary(*args)
            self.assertEqual(r.returncode, 2, f"{args}: {r.stdout}{r.stderr}")
        self.assertEqual(self.helm_calls(), [])


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    run, bad = result.testsRun, len(result.failures) + len(result.errors)
    print(f"canary tests: {run - bad} passed, {bad} failed")
    sys.exit(1 if bad or not run else 0)
