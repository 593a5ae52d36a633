#!/usr/bin/env python3
"""Writes a many-source mesh as ServiceEntry files, one directory per source.

  <OUTDIR>/zones/src00/entries.yaml ... src<SOURCES-1>/entries.yaml

Every source declares HOSTS * COPIES / SOURCES entries, one host each; every host is declared
by COPIES sources (those whose number is congruent to it modulo SOURCES / COPIES), with the same
address in each, so nothing conflicts. A third of the hosts (number divisible by 3) have no
`spec.addresses`: they need an allocated VIP. Every entry has one named port (an SRV name).

Usage: gen_mesh.py HOSTS SOURCES COPIES OUTDIR
"""
import ipaddress
import os
import sys


def host(h):
    return f"svc{h}.ns{h % 100}.global"


def address(h):
    """The explicit address of host h (None when it needs a VIP)."""
    if h % 3 == 0:
        return None
    return ipaddress.ip_network("241.0.0.0/8")[h + 1]


def main():
    hosts, sources, copies, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    groups = sources // copies
    assert groups * copies == sources, "SOURCES must be a multiple of COPIES"
    for s in range(sources):
        d = os.path.join(out, "zones", f"src{s:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "entries.yaml"), "w") as f:
            for h in range(s % groups, hosts, groups):
                a = address(h)
                addresses = f"addresses: [{a}], " if a else ""
                f.write(
                    "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
                    f"metadata: {{name: se{h}, namespace: ns{h % 100}}}\n"
                    f"spec: {{hosts: [{host(h)}], {addresses}location: MESH_INTERNAL, "
                    "resolution: DNS, ports: [{number: 80, name: http, protocol: HTTP}]}\n"
                )


if __name__ == "__main__":
    main()
