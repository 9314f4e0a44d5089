#!/usr/bin/env python3
"""The floor under every loopback call on this machine: a 1-byte TCP ping-pong over 127.0.0.1
with TCP_NODELAY, between two processes (as a client and a service pod are) and between two
threads of one process. No gRPC, no HTTP/2, no runtime: what the kernel and the (virtual) CPUs
charge for one round trip. BENCHMARKS.md compares gRPC latencies with it.

Run: python3 scripts/loopback_rtt.py [ROUND_TRIPS]   (default 20000)
"""

import socket
import statistics
import sys
import threading
import time
from multiprocessing import Process


def echo(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def measure(port: int, round_trips: int) -> list[float]:
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(500):  # warm-up
        client.sendall(b"x")
        client.recv(16)
    samples = []
    for _ in range(round_trips):
        started = time.perf_counter()
        client.sendall(b"x")
        client.recv(16)
        samples.append(time.perf_counter() - started)
    client.close()
    return sorted(samples)


def report(name: str, samples: list[float]) -> None:
    def at(p: float) -> float:
        return samples[min(len(samples) - 1, int(len(samples) * p))] * 1e6

    print(
        f"{name}: p50 {at(0.50):.0f} us, p90 {at(0.90):.0f} us, p99 {at(0.99):.0f} us, "
        f"mean {statistics.fmean(samples) * 1e6:.0f} us ({len(samples)} round trips)"
    )


def listener() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


def main() -> None:
    round_trips = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    sock = listener()
    server = Process(target=echo, args=(sock,), daemon=True)
    server.start()
    report("two processes", measure(sock.getsockname()[1], round_trips))
    server.terminate()

    sock = listener()
    threading.Thread(target=echo, args=(sock,), daemon=True).start()
    report("two threads of one process", measure(sock.getsockname()[1], round_trips))


if __name__ == "__main__":
    main()
