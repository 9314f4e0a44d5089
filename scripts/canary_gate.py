#!/usr/bin/env python3
"""The canary gate of scripts/canary.sh: is the canary as good as stable, by Prometheus?

Asks Prometheus's HTTP API (GET /api/v1/query) about one gRPC service over a window:
  - canary calls:        sum(increase(grpc_server_handled_total{track="canary"}[W]))
  - error ratio (each track): server-side error codes / all calls, from grpc_server_handled_total
  - p95 latency (each track): histogram_quantile(0.95, ...grpc_server_handling_seconds_bucket...)
and fails when the canary had too few calls to judge, its error ratio is above --max-error-ratio
or more than --max-error-increase above stable's, or its p95 is more than --max-p95-ratio times
stable's (or above --max-p95-seconds). When stable has no calls in the window (at 100% canary),
the comparisons with stable are skipped and only the absolute limits apply.

Exit status: 0 pass, 1 fail, 2 Prometheus could not answer (the caller treats it as a failure).
Standard library only: it runs on any machine with python3.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.parse
import urllib.request

# The codes by which the server says it failed; a caller's mistake (InvalidArgument,
# FailedPrecondition for a spent budget, ...) says nothing about the canary.
ERROR_CODES = "Unknown|DeadlineExceeded|Unimplemented|Internal|Unavailable|DataLoss"


class PrometheusError(Exception):
    pass


def query(base_url: str, promql: str, timeout: float) -> float | None:
    """The single value of an instant query; None when the result is empty or NaN."""
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise PrometheusError(f"{url}: {e}") from None
    if body.get("status") != "success":
        raise PrometheusError(f"query {promql!r}: {body.get('errorType')}: {body.get('error')}")
    result = body.get("data", {}).get("result", [])
    if not result:
        return None
    if len(result) > 1:
        raise PrometheusError(f"query {promql!r} returned {len(result)} series, want one")
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def queries(service: str, window: str, match: str) -> dict[str, str]:
    def sel(track: str, extra: str = "") -> str:
        parts = [f'grpc_service="{service}"', f'track="{track}"'] + ([match] if match else []) + (
            [extra] if extra else [])
        return "{" + ",".join(parts) + "}"

    q = {"canary_calls": f"sum(increase(grpc_server_handled_total{sel('canary')}[{window}]))"}
    errors = f'grpc_code=~"{ERROR_CODES}"'
    for track in ("canary", "stable"):
        q[f"{track}_error_ratio"] = (
            f"(sum(rate(grpc_server_handled_total{sel(track, errors)}[{window}]))"
            f" or vector(0)) / sum(rate(grpc_server_handled_total{sel(track)}[{window}]))")
        q[f"{track}_p95_seconds"] = (
            f"histogram_quantile(0.95, sum by (le) (rate(grpc_server_handling_seconds_bucket{sel(track)}[{window}])))")
    return q


def evaluate(args: argparse.Namespace) -> tuple[bool, list[str]]:
    values = {name: query(args.prometheus_url, promql, args.timeout)
              for name, promql in queries(args.service, args.window, args.match).items()}
    lines = [f"{name} = {'no data' if v is None else f'{v:.6g}'}" for name, v in values.items()]
    failures = []
    calls = values["canary_calls"] or 0.0
    if calls < args.min_requests:
        failures.append(f"the canary served {calls:.0f} calls in {args.window}, fewer than "
                        f"--min-requests {args.min_requests}: too few to judge")
    c_err, s_err = values["canary_error_ratio"], values["stable_error_ratio"]
    c_p95, s_p95 = values["canary_p95_seconds"], values["stable_p95_seconds"]
    if c_err is not None and c_err > args.max_error_ratio:
        failures.append(f"canary error ratio {c_err:.4f} > --max-error-ratio {args.max_error_ratio}")
    if c_err is not None and s_err is not None and c_err - s_err > args.max_error_increase:
        failures.append(f"canary error ratio {c_err:.4f} exceeds stable's {s_err:.4f} by more than "
                        f"--max-error-increase {args.max_error_increase}")
    if c_p95 is not None and s_p95 is not None and s_p95 > 0 and c_p95 > s_p95 * args.max_p95_ratio:
        failures.append(f"canary p95 {c_p95 * 1000:.1f} ms > --max-p95-ratio {args.max_p95_ratio} x "
                        f"stable's {s_p95 * 1000:.1f} ms")
    if c_p95 is not None and args.max_p95_seconds is not None and c_p95 > args.max_p95_seconds:
        failures.append(f"canary p95 {c_p95 * 1000:.1f} ms > --max-p95-seconds {args.max_p95_seconds}")
    if calls >= args.min_requests and (c_err is None or c_p95 is None):
        failures.append("canary calls were counted but its error ratio or p95 has no data")
    if s_err is None or s_p95 is None:
        lines.append("stable has no calls in the window: comparisons with stable skipped, absolute limits only")
    return not failures, lines + [f"FAIL: {f}" for f in failures]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus-url", required=True)
    p.add_argument("--service", default="tollgate.v1.Router", help="grpc_service label value")
    p.add_argument("--window", default="5m", help="PromQL range of the rates")
    p.add_argument("--match", default="", help='extra label matcher, e.g. namespace="tollgate"')
    p.add_argument("--min-requests", type=float, default=100)
    p.add_argument("--max-error-ratio", type=float, default=0.01)
    p.add_argument("--max-error-increase", type=float, default=0.005)
    p.add_argument("--max-p95-ratio", type=float, default=1.2)
    p.add_argument("--max-p95-seconds", type=float, default=None)
    p.add_argument("--timeout", type=float, default=10, help="seconds per Prometheus query")
    p.add_argument("--print-queries", action="store_true", help="print the PromQL and exit")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.print_queries:
        for name, promql in queries(args.service, args.window, args.match).items():
            print(f"  {name}: {promql}")
        return 0
    try:
        ok, lines = evaluate(args)
    except PrometheusError as e:
        print(f"canary gate: Prometheus did not answer: {e}", file=sys.stderr)
        return 2
    for line in lines:
        print(f"  {line}")
    print(f"canary gate: {'PASS' if ok else 'FAIL'} ({args.service}, last {args.window})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
