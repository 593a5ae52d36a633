#!/usr/bin/env python3
"""Drives changes into a globaldns zones directory and times how soon DNS shows each.

  mesh_changes.py ready   PORT NAME...            seconds until every NAME answers an address
  mesh_changes.py changes PORT DIR COUNT          COUNT changes one after another; latency of each
  mesh_changes.py churn   PORT DIR RATE SECONDS   RATE changes/s; latency of each

A change lands by rename (atomic, as a GitOps tool or `kubectl cp` writes), and its clock starts
right after the rename. Changes cycle through: a new entry with an address, an earlier entry's
address changed, an earlier entry deleted, a new address-less entry (it needs a VIP stored
first). Visible
means: the name answers the new address (any address for an address-less one), or NXDOMAIN once
deleted. The server is asked over UDP on loopback every millisecond.
Prints one line per figure: "<name> <value>" (latencies in ms).
"""
import os
import random
import socket
import struct
import sys
import time


def query(name, qid):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def skip_name(msg, at):
    while True:
        n = msg[at]
        if n == 0:
            return at + 1
        if n & 0xC0 == 0xC0:
            return at + 2
        at += 1 + n


def parse(msg):
    """(id, rcode, [IPv4 addresses]) of a reply."""
    qid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    at = 12
    for _ in range(qd):
        at = skip_name(msg, at) + 4
    addrs = []
    for _ in range(an):
        at = skip_name(msg, at)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[at:at + 10])
        at += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[at:at + 4]))
        at += rdlen
    return qid, flags & 0xF, addrs


class Watcher:
    """Asks for pending names until each shows what is expected of it."""

    def __init__(self, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.pending = {}  # qid -> (name, expect, start)
        self.next_id = 1
        self.done = []

    def add(self, name, expect, start):
        self.pending[self.next_id] = (name, expect, start)
        self.next_id = self.next_id % 65535 + 1

    def poll(self):
        for qid, (name, _, _) in list(self.pending.items()):
            try:
                self.sock.send(query(name, qid))
            except BlockingIOError:
                pass
        deadline = time.monotonic() + 0.001
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096)
            except BlockingIOError:
                time.sleep(0.0002)
                continue
            qid, rcode, addrs = parse(msg)
            entry = self.pending.get(qid)
            if entry is None:
                continue
            name, expect, start = entry
            if expect == "gone":
                ok = rcode == 3
            elif expect == "any":
                ok = rcode == 0 and bool(addrs)
            else:
                ok = rcode == 0 and addrs == [expect]
            if ok:
                self.done.append((time.monotonic() - start) * 1000)
                del self.pending[qid]


def write(path, text):
    # Written beside the zones directory (outside the watch), then renamed in.
    outside = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    tmp = os.path.join(outside, "." + os.path.basename(path))
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def entry(name, host, address):
    addresses = f"addresses: [{address}], " if address else ""
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: bench}}\n"
        f"spec: {{hosts: [{host}], {addresses}resolution: DNS, "
        "ports: [{number: 80, name: http, protocol: HTTP}]}\n"
    )


class Changes:
    """The cycle of changes, as (apply, name, expectation). Cycle c adds entry c, changes the
    address of entry c-10 and deletes entry c-20 (so no two changes in flight touch one name,
    even at a high rate), then adds an address-less entry."""

    def __init__(self, zones, prefix):
        self.zones = zones
        self.prefix = prefix
        self.i = 0

    def path(self, c, kind="change"):
        return os.path.join(self.zones, f"src{c % 100:02d}", f"{self.prefix}-{kind}{c}.yaml")

    def next(self):
        c, step = self.i // 4, self.i % 4
        self.i += 1
        ip = lambda first, n: f"{first}.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}"
        if step == 1 and c >= 10:
            n = c - 10
            host = f"{self.prefix}-change{n}.bench.global"
            return lambda: write(self.path(n), entry(f"{self.prefix}-change{n}", host, ip(243, n))), host, ip(243, n)
        if step == 2 and c >= 20:
            n = c - 20
            return lambda: os.remove(self.path(n)), f"{self.prefix}-change{n}.bench.global", "gone"
        if step == 0:
            host = f"{self.prefix}-change{c}.bench.global"
            return lambda: write(self.path(c), entry(f"{self.prefix}-change{c}", host, ip(242, c))), host, ip(242, c)
        n = self.i
        host = f"{self.prefix}-vip{n}.bench.global"
        return lambda: write(self.path(n, "vip"), entry(f"{self.prefix}-vip{n}", host, None)), host, "any"


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(prefix, latencies, lost):
    print(f"{prefix}_count {len(latencies)}")
    print(f"{prefix}_unseen {lost}")
    if latencies:
        for p in (50, 95, 99):
            print(f"{prefix}_p{p} {percentile(latencies, p):.1f}")
        print(f"{prefix}_max {max(latencies):.1f}")


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    w = Watcher(port)
    if mode == "ready":
        start = time.monotonic()
        for name in sys.argv[3:]:
            w.add(name, "any", start)
        while w.pending:
            w.poll()
        print(f"ready {time.monotonic() - start:.2f}")
        return
    zones = sys.argv[3]
    changes = Changes(zones, mode)
    if mode == "changes":
        count = int(sys.argv[4])
        for _ in range(count):
            apply, name, expect = changes.next()
            apply()
            w.add(name, expect, time.monotonic())
            deadline = time.monotonic() + 30
            while w.pending and time.monotonic() < deadline:
                w.poll()
            w.pending.clear()
            # Let the server settle, as separate edits would.
            time.sleep(0.02 + random.random() * 0.02)
        report("change", w.done, count - len(w.done))
    elif mode == "churn":
        rate, seconds = float(sys.argv[4]), float(sys.argv[5])
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < seconds:
            if sent < (time.monotonic() - start) * rate:
                apply, name, expect = changes.next()
                apply()
                w.add(name, expect, time.monotonic())
                sent += 1
            w.poll()
        deadline = time.monotonic() + 30
        while w.pending and time.monotonic() < deadline:
            w.poll()
        for name, expect, _ in w.pending.values():
            print(f"never seen: {name} {expect}", file=sys.stderr)
        report("churn", w.done, sent - len(w.done))


if __name__ == "__main__":
    main()
