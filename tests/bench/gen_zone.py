#!/usr/bin/env python3
"""Writes one synthetic .global zone three ways, for the benchmark:

  zones/entries.yaml   ServiceEntry manifests (what globaldns reads)
  global.zone          the same names as an RFC 1035 zone file (what NSD and Knot read)
  queries.txt          a dnsperf input: 80% A, 10% AAAA, 10% names that do not exist

Usage: gen_zone.py NAMES OUTDIR
"""
import ipaddress
import os
import random
import sys


def main():
    count, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(os.path.join(out, "zones"), exist_ok=True)
    v4 = ipaddress.ip_network("240.0.0.0/4")
    v6 = ipaddress.ip_network("2001:2::/48")
    hosts = [(f"svc{i}.ns{i % 100}.global", v4[i + 1], v6[i + 1]) for i in range(count)]

    with open(os.path.join(out, "zones", "entries.yaml"), "w") as f:
        for i, (host, a, aaaa) in enumerate(hosts):
            f.write(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
                f"metadata: {{name: se{i}, namespace: ns{i % 100}}}\n"
                f"spec: {{hosts: [{host}], addresses: [{a}, '{aaaa}'], location: MESH_INTERNAL, resolution: DNS}}\n"
            )

    with open(os.path.join(out, "global.zone"), "w") as f:
        f.write("$ORIGIN global.\n$TTL 30\n")
        f.write("@ SOA ns.dns.global. hostmaster.global. 1 7200 1800 86400 30\n@ NS ns.dns.global.\n")
        for host, a, aaaa in hosts:
            f.write(f"{host}. A {a}\n{host}. AAAA {aaaa}\n")

    rng = random.Random(42)
    with open(os.path.join(out, "queries.txt"), "w") as f:
        for i in range(100_000):
            roll = rng.random()
            host = hosts[rng.randrange(count)][0]
            if roll < 0.8:
                f.write(f"{host} A\n")
            elif roll < 0.9:
                f.write(f"{host} AAAA\n")
            else:
                f.write(f"missing{i}.ns{i % 100}.global A\n")


if __name__ == "__main__":
    main()
