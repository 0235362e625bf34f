#!/usr/bin/env python3
"""Slow and silent connections against a local `shopdesk serve` (loopback only, bounded).

Opens N connections from 127.0.0.1 that send a request line and one header, then one more header
byte every few seconds (slowloris), and M connections that send nothing. Meanwhile a client on
another loopback address (127.0.0.2) keeps calling /healthz. Reports how many connections the
server refused at once (over the per-address cap), how long the others stayed open (the
header-read timeout), and the other client's latency throughout.

    python3 benches/slowloris.py --port 8080 --slow 200 --silent 300 --seconds 30

Standard library only. Every connection goes to 127.0.0.1; the run ends by itself.
"""

import argparse
import http.client
import select
import socket
import statistics
import threading
import time


def other_client(port, stop, latencies, failures):
    while not stop.is_set():
        t = time.perf_counter()
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.sock = s
            c.request("GET", "/healthz")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                latencies.append((time.perf_counter() - t) * 1e3)
            else:
                failures.append(r.status)
        except OSError as e:
            failures.append(str(e))
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--silent", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30)
    a = ap.parse_args()

    stop = threading.Event()
    lat, fail = [], []
    th = threading.Thread(target=other_client, args=(a.port, stop, lat, fail))
    th.start()

    conns = []  # (socket, kind, opened_at)
    for i in range(a.slow + a.silent):
        kind = "slow" if i < a.slow else "silent"
        try:
            s = socket.create_connection(("127.0.0.1", a.port), timeout=2)
        except OSError:
            conns.append((None, kind, time.perf_counter()))
            continue
        if kind == "slow":
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
        s.setblocking(False)
        conns.append((s, kind, time.perf_counter()))

    closed_at = {}
    start = time.perf_counter()
    last_drip = start
    while time.perf_counter() - start < a.seconds and len(closed_at) < len(conns):
        live = [(i, c[0]) for i, c in enumerate(conns) if c[0] is not None and i not in closed_at]
        for i, c in enumerate(conns):
            if c[0] is None and i not in closed_at:
                closed_at[i] = 0.0
        if not live:
            break
        r, _, _ = select.select([s for _, s in live], [], [], 0.2)
        by_sock = {s: i for i, s in live}
        for s in r:
            i = by_sock[s]
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_at[i] = time.perf_counter() - conns[i][2]
        if time.perf_counter() - last_drip > 3:
            last_drip = time.perf_counter()
            for i, s in live:
                if conns[i][1] == "slow" and i not in closed_at:
                    try:
                        s.send(b"X")
                    except OSError:
                        closed_at[i] = time.perf_counter() - conns[i][2]
    stop.set()
    th.join()

    for kind in ("slow", "silent"):
        idx = [i for i, c in enumerate(conns) if c[1] == kind]
        at = [closed_at[i] for i in idx if i in closed_at]
        at_once = sum(1 for t in at if t < 0.5)
        later = sorted(t for t in at if t >= 0.5)
        still = len(idx) - len(at)
        span = f"{min(later):.1f}-{max(later):.1f} s" if later else "-"
        print(f"{kind}: {len(idx)} opened, {at_once} closed at once (cap), {len(later)} closed after {span}, {still} still open after {a.seconds:.0f} s")
    if lat:
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"other client (127.0.0.2): {len(lat)} /healthz ok, median {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms, {len(fail)} failed")
    else:
        print(f"other client (127.0.0.2): no successful call, {len(fail)} failed: {fail[:3]}")
    for s, _, _ in conns:
        if s is not None:
            s.close()


if __name__ == "__main__":
    main()
