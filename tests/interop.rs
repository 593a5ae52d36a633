//! Interop with real resolvers installed from Debian: `unbound` with a `stub-zone` for `global.`
//! pointing at globaldns, and the glibc resolver of a "VM" (`getent` in private mount and network
//! namespaces whose `/etc/resolv.conf` names globaldns on 127.0.0.1:53).
//!
//! Needs the Debian packages `unbound`, `util-linux` (unshare, mount) and preferably `iproute2`.

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use support::*;

const HOST: &str = "httpbin.bar.global";
const VIP: &str = "127.255.0.3";

/// Writes the VM example of zones/httpbin-vm.yaml, `httpbin.bar.global` → VIP, into `dir`.
fn write_vm_zones(dir: &Path) {
    std::fs::write(
        dir.join("httpbin-vm.yaml"),
        service_entry("httpbin-bar", &[HOST], &[VIP]),
    )
    .unwrap();
}

/// A child process killed (and reaped) on drop, panics included.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free for both UDP and TCP when this returns (released again: the caller
/// retries if someone takes it meanwhile).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One UDP query with a short wait, for polling: `None` unless a response to it comes in time.
fn try_query(addr: SocketAddr, name: &str, qtype: RecordType, wait: Duration) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.connect(addr).ok()?;
    sock.set_read_timeout(Some(wait)).ok()?;
    let msg = query_message(name, qtype, Some(1232));
    sock.send(&msg.to_vec().unwrap()).ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    // Until unbound binds its port, the kernel may give this very port to our socket, which then
    // talks to itself: its own query is no answer.
    Message::from_vec(&buf[..n]).ok().filter(|reply| {
        reply.metadata.id == msg.metadata.id && reply.metadata.message_type == MessageType::Response
    })
}

/// A running `unbound` on a loopback port, resolving `global.` through a stub zone. Fields drop
/// in order: the process dies before its directory goes.
struct Unbound {
    _child: Reaped,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Unbound {
    fn start(stub: SocketAddr) -> Unbound {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let conf = dir.path().join("unbound.conf");
            std::fs::write(&conf, unbound_conf(dir.path(), addr, stub)).unwrap();
            let log = dir.path().join("unbound.log");
            let log_file = std::fs::File::create(&log).unwrap();
            let child = Command::new("/usr/sbin/unbound")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("unbound (Debian package unbound) must be installed");
            let mut child = Reaped(child);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = child.0.try_wait().unwrap() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("already in use") || text.contains("could not open ports") {
                        break; // someone took the port: another one
                    }
                    panic!("unbound exited ({status}):\n{text}");
                }
                // `localhost.` is one of unbound's own local zones: 127.0.0.1 means it serves.
                let probe = try_query(
                    addr,
                    "localhost.",
                    RecordType::A,
                    Duration::from_millis(200),
                );
                if probe.is_some_and(|reply| answer_ips(&reply) == ["127.0.0.1"]) {
                    return Unbound {
                        _child: child,
                        addr,
                        dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "unbound does not answer on {addr}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        panic!("no free port for unbound after 5 tries");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }

    /// Asks unbound; a missing reply fails with both logs.
    fn ask(&self, server: &GlobalDns, name: &str, qtype: RecordType, proto: Proto) -> Message {
        let msg = query_message(name, qtype, Some(1232));
        let Some(raw) = exchange_raw(self.addr, &msg.to_vec().unwrap(), proto) else {
            panic!(
                "{name} {qtype} over {proto:?}: no reply from unbound\n{}",
                logs(self, server)
            );
        };
        let reply = Message::from_vec(&raw).expect("reply decodes");
        assert_eq!(reply.metadata.id, msg.metadata.id, "reply ID");
        reply
    }
}

fn logs(unbound: &Unbound, server: &GlobalDns) -> String {
    format!(
        "--- unbound:\n{}\n--- globaldns:\n{}",
        unbound.log_text(),
        server.log_text()
    )
}

/// A configuration for an unprivileged, foreground, loopback-only unbound without DNSSEC (so
/// no root.key), sending `global.` to `stub`.
fn unbound_conf(dir: &Path, addr: SocketAddr, stub: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"server:
    verbosity: 1
    use-syslog: no
    logfile: ""
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    interface: 127.0.0.1
    port: {port}
    outgoing-interface: 127.0.0.1
    so-reuseport: no
    num-threads: 1
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    domain-insecure: "global"

stub-zone:
    name: "global."
    stub-addr: {stub_ip}@{stub_port}

remote-control:
    control-enable: no
"#,
        port = addr.port(),
        stub_ip = stub.ip(),
        stub_port = stub.port(),
    )
}

#[test]
fn unbound_stub_zone_resolves_global_names() {
    let zones = tempfile::tempdir().unwrap();
    write_vm_zones(zones.path());
    let server = GlobalDns::start(zones.path(), &[]);
    let unbound = Unbound::start(server.addr);
    let logs = || logs(&unbound, &server);

    for proto in [Proto::Udp, Proto::Tcp] {
        let reply = unbound.ask(&server, HOST, RecordType::A, proto);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{proto:?}\n{}",
            logs()
        );
        assert_eq!(answer_ips(&reply), [VIP], "{proto:?}\n{}", logs());
        // A recursive answer from unbound, not one straight from us.
        assert!(reply.metadata.recursion_available, "{proto:?}: RA");
        assert!(reply.answers[0].ttl <= 30, "{proto:?}: TTL at most ours");
    }

    // No AAAA for an IPv4-only host: NODATA.
    let nodata = unbound.ask(&server, HOST, RecordType::AAAA, Proto::Udp);
    assert_eq!(
        nodata.metadata.response_code,
        ResponseCode::NoError,
        "{}",
        logs()
    );
    assert!(nodata.answers.is_empty(), "{:?}", nodata.answers);

    // Missing names come through as NXDOMAIN, with our SOA (so from us, not the real .global TLD).
    for name in ["nope.bar.global.", "missing.global."] {
        let nx = unbound.ask(&server, name, RecordType::A, Proto::Udp);
        assert_eq!(
            nx.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}\n{}",
            logs()
        );
        assert!(nx.answers.is_empty(), "{name}: {:?}", nx.answers);
        let soa = nx.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa),
            _ => None,
        });
        assert_eq!(
            soa.map(|s| s.mname.to_ascii()).as_deref(),
            Some("ns.dns.global."),
            "{name}: {:?}",
            nx.authorities
        );
    }
}

/// Runs in private mount, network and PID namespaces: brings up `lo` with VM addresses, starts
/// globaldns on 127.0.0.1:53, covers /etc/resolv.conf (and nsswitch.conf) with our own, then runs
/// each lookup as `== COMMAND` / its output / `rc=N`. Killing the namespace's first process (this
/// shell) kills globaldns with it.
const VM_SCRIPT: &str = r#"
dir=$1
bin=$2
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null' EXIT
# Up goes lo, with "VM addresses" (documentation prefixes) beside 127.0.0.1 and ::1: getaddrinfo's
# AI_ADDRCONFIG, used by getent ahosts*, asks for no A (no AAAA) on a host without an IPv4 (IPv6)
# address other than loopback. IPv6 is best effort: without it, ahosts asks for A only.
if command -v ip >/dev/null 2>&1; then
    ip link set lo up && ip addr add 192.0.2.10/32 dev lo || exit 1
    ip addr add 2001:db8::10/128 dev lo 2>/dev/null
else
    # No iproute2: SIOCGIFFLAGS, SIOCSIFFLAGS (IFF_UP) and SIOCSIFADDR through perl-base.
    perl -e 'socket(my $s, 2, 2, 0) or die "socket: $!";
        my $r = pack("a16 x24", "lo"); ioctl($s, 0x8913, $r) or die "get flags: $!";
        $r = pack("a16 s x22", "lo", unpack("x16 s", $r) | 1);
        ioctl($s, 0x8914, $r) or die "set flags: $!";
        $r = pack("a16 S n C4 x16", "lo:vm", 2, 0, 192, 0, 2, 10);
        ioctl($s, 0x8916, $r) or die "set address: $!";
        socket(my $s6, 10, 2, 0) or exit 0;
        $r = pack("n8 L l", 0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10, 128, 1);
        ioctl($s6, 0x8916, $r)' || exit 1
fi
"$bin" --listen 127.0.0.1:53 --zones "$dir/zones" --state "$dir/state.json" \
    --resolv-conf /dev/null --workers 2 >"$dir/globaldns.out" 2>"$dir/globaldns.log" &
pid=$!
i=0
until grep -q '^listening on ' "$dir/globaldns.out"; do
    kill -0 "$pid" 2>/dev/null || { echo "globaldns exited"; cat "$dir/globaldns.log"; exit 1; }
    i=$((i + 1))
    [ "$i" -lt 300 ] || { echo "globaldns did not start"; cat "$dir/globaldns.log"; exit 1; }
    sleep 0.05
done
mount --bind "$dir/resolv.conf" /etc/resolv.conf || exit 1
mount --bind "$dir/nsswitch.conf" /etc/nsswitch.conf || exit 1
# A host's nscd would answer from outside the namespaces.
if [ -e /run/nscd/socket ]; then mount -t tmpfs tmpfs /run/nscd || exit 1; fi
for cmd in "hosts $3" "ahostsv4 $3" "ahosts $3" "hosts $4"; do
    echo "== getent $cmd"
    getent $cmd
    echo "rc=$?"
done
"#;

#[test]
fn glibc_resolver_of_a_vm_resolves_global_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("zones")).unwrap();
    write_vm_zones(&dir.path().join("zones"));
    std::fs::write(
        dir.path().join("resolv.conf"),
        "nameserver 127.0.0.1\noptions attempts:1 timeout:2\n",
    )
    .unwrap();
    // Whatever the host's own (systemd-resolved, mdns...): a VM's plain `files dns`.
    std::fs::write(dir.path().join("nsswitch.conf"), "hosts: files dns\n").unwrap();
    let script = dir.path().join("vm.sh");
    std::fs::write(&script, VM_SCRIPT).unwrap();

    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    let out_path = dir.path().join("vm.out");
    cmd.args(["--mount", "--net", "--pid", "--fork", "--kill-child"])
        .arg("sh")
        .arg(&script)
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_globaldns"))
        .args([HOST, "nope.bar.global"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(dir.path().join("vm.err")).unwrap());
    let mut child = Reaped(cmd.spawn().expect("unshare (Debian package util-linux)"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            eprintln!("timed out: killing unshare and with it the namespaces' processes");
            child.0.kill().unwrap();
            break child.0.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let out = read("vm.out");
    let context = format!(
        "{status}\n--- stdout:\n{out}\n--- stderr:\n{}\n--- globaldns:\n{}",
        read("vm.err"),
        read("globaldns.log")
    );
    assert!(status.success(), "{context}");

    // `== getent ARGS` → (output lines, exit code)
    let mut runs: HashMap<String, (Vec<String>, String)> = HashMap::new();
    let mut current = None;
    for line in out.lines() {
        if let Some(cmd) = line.strip_prefix("== ") {
            current = Some(cmd.to_string());
            runs.insert(cmd.to_string(), Default::default());
        } else if let Some(cmd) = &current {
            let run = runs.get_mut(cmd).unwrap();
            match line.strip_prefix("rc=") {
                Some(rc) => run.1 = rc.to_string(),
                None => run.0.push(line.to_string()),
            }
        }
    }
    let run = |cmd: &str| {
        runs.get(cmd)
            .cloned()
            .unwrap_or_else(|| panic!("`{cmd}` not run\n{context}"))
    };

    // gethostbyname: `127.255.0.3     httpbin.bar.global`
    let (lines, rc) = run(&format!("getent hosts {HOST}"));
    assert_eq!(rc, "0", "{context}");
    let fields: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(fields, [vec![VIP, HOST]], "{context}");

    // getaddrinfo, A only, and A + AAAA in parallel (given IPv6): every line is the VIP.
    for cmd in ["ahostsv4", "ahosts"] {
        let (lines, rc) = run(&format!("getent {cmd} {HOST}"));
        assert_eq!(rc, "0", "{cmd}\n{context}");
        assert!(!lines.is_empty(), "{cmd}\n{context}");
        for line in &lines {
            assert_eq!(
                line.split_whitespace().next(),
                Some(VIP),
                "{cmd}\n{context}"
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().any(|w| w == HOST)),
            "{cmd}: canonical name\n{context}"
        );
    }

    // NXDOMAIN: getent's "key not found".
    let (lines, rc) = run("getent hosts nope.bar.global");
    assert_eq!((lines.len(), rc.as_str()), (0, "2"), "{context}");
}
