//! Interop with real resolvers installed from Debian: `unbound` with a `stub-zone` for `global.`
//! pointing at globaldns; unbound (`stub-prime`) and BIND (`type stub`) priming the zone from our
//! NS record; a validating unbound under a root signed by knotd; and the glibc resolver of a "VM"
//! (`getent`). All but the first run in private mount, network and PID namespaces
//! (tests/support/netns.rs), where globaldns listens on 127.0.0.1:53.
//!
//! Needs the Debian packages `unbound`, `bind9`, `knot`, `knot-dnsutils`, `util-linux` (unshare,
//! mount) and preferably `iproute2`.

mod support;

use std::net::{SocketAddr, UdpSocket};
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

/// A VM in private namespaces: globaldns on 127.0.0.1:53, /etc/resolv.conf (and nsswitch.conf)
/// covered with our own, then each lookup as a section.
const VM_SCRIPT: &str = r#"
dir=$1
lo_up || exit 1
start_globaldns "$2" "$dir" || exit 1
mount --bind "$dir/resolv.conf" /etc/resolv.conf || exit 1
mount --bind "$dir/nsswitch.conf" /etc/nsswitch.conf || exit 1
# A host's nscd would answer from outside the namespaces.
if [ -e /run/nscd/socket ]; then mount -t tmpfs tmpfs /run/nscd || exit 1; fi
for cmd in "hosts $3" "ahostsv4 $3" "ahosts $3" "hosts $4"; do
    section "getent $cmd" getent $cmd
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
    let bin = env!("CARGO_BIN_EXE_globaldns");
    let args = [
        dir.path().as_os_str(),
        bin.as_ref(),
        HOST.as_ref(),
        "nope.bar.global".as_ref(),
    ];
    let vm = netns::run_isolated(dir.path(), VM_SCRIPT, &args, Duration::from_secs(60));
    let context = &vm.context;
    assert!(vm.status.success(), "{context}");
    let run = |cmd: &str| vm.section(cmd);

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

/// A resolver that primes its stub zone for `global.` (asks globaldns for the apex NS, then
/// reaches the name server at the address the NS name resolves to, port 53) runs beside
/// globaldns on 127.0.0.1:53 in private namespaces, and is asked through port 5300: a `.global`
/// name when it starts, and again after the NS record (TTL 1 s) has expired.
const PRIMING_SCRIPT: &str = r#"
dir=$1
lo_up || exit 1
start_globaldns "$2" "$dir" --ttl 1 --soa-minimum 1 || exit 1
shift 2
"$@" >"$dir/resolver.log" 2>&1 &
pids="$pids $!"
i=0
until kdig @127.0.0.1 -p 5300 +time=1 +retry=0 localhost A 2>/dev/null | grep -q 'status: '; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "the resolver does not answer"; exit 1; }
    sleep 0.1
done
ask() { kdig @127.0.0.1 -p 5300 +time=3 +retry=1 httpbin.bar.global A; }
section first ask
sleep 3
section "after the NS expired" ask
section "the apex NS" kdig @127.0.0.1 -p 53 +norec global NS
"#;

fn unbound_priming_conf(dir: &Path) -> String {
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
    port: 5300
    so-reuseport: no
    num-threads: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    domain-insecure: "global"

stub-zone:
    name: "global."
    stub-addr: 127.0.0.1
    stub-prime: yes

remote-control:
    control-enable: no
"#
    )
}

fn named_stub_conf(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port 5300 {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ any; }};
    allow-recursion {{ any; }};
    dnssec-validation no;
}};
controls {{ }};
zone "global" {{
    type stub;
    primaries {{ 127.0.0.1; }};
}};
"#
    )
}

/// Runs a priming resolver (`command`, its configuration already in `dir`) against globaldns
/// serving the VM example, and checks both lookups and the apex NS with its address.
fn primes_and_resolves(dir: &Path, command: &[&str]) {
    std::fs::create_dir(dir.join("zones")).unwrap();
    write_vm_zones(&dir.join("zones"));
    let bin = env!("CARGO_BIN_EXE_globaldns");
    let mut args: Vec<&std::ffi::OsStr> = vec![dir.as_os_str(), bin.as_ref()];
    args.extend(command.iter().map(|a| std::ffi::OsStr::new(*a)));
    let run = netns::run_isolated(dir, PRIMING_SCRIPT, &args, Duration::from_secs(60));
    let context = &run.context;
    assert!(run.status.success(), "{context}");
    for ask in ["first", "after the NS expired"] {
        let (lines, rc) = run.section(ask);
        let text = lines.join("\n");
        assert_eq!(rc, "0", "{ask}\n{context}");
        assert!(text.contains("status: NOERROR"), "{ask}: {text}\n{context}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("httpbin.bar.global.") && l.ends_with(VIP)),
            "{ask}: {text}\n{context}"
        );
    }
    // The NS answer carries the name server's address (the loopback listener's, by default).
    let (lines, _) = run.section("the apex NS");
    let text = lines.join("\n");
    assert!(text.contains("ADDITIONAL SECTION"), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("ns.dns.global.")
            && l.contains("\tA\t")
            && l.ends_with("127.0.0.1")),
        "{text}"
    );
}

/// unbound with `stub-prime: yes` (issue 15): it takes the zone's NS set from us and keeps
/// resolving once the NS record expires, because the NS name resolves.
#[test]
fn unbound_primes_the_stub_zone_from_our_ns_record() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("unbound.conf");
    std::fs::write(&conf, unbound_priming_conf(dir.path())).unwrap();
    primes_and_resolves(
        dir.path(),
        &["/usr/sbin/unbound", "-d", "-c", conf.to_str().unwrap()],
    );
}

/// BIND with `type stub` (issue 15): it loads the zone's NS set (and its address) from us and
/// resolves `.global` names through it; without an address for the NS name it reports "loop
/// detected resolving ns.dns.global/A" for every name.
#[test]
fn bind_stub_zone_resolves_through_our_name_server() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("named.conf");
    std::fs::write(&conf, named_stub_conf(dir.path())).unwrap();
    primes_and_resolves(
        dir.path(),
        &["/usr/sbin/named", "-g", "-c", conf.to_str().unwrap()],
    );
}

/// A validating unbound in front of globaldns (issue 15): `.global` is a real, signed TLD, whose
/// delegation in the root carries a DS record. Here the root is our own, signed by knotd on
/// 127.0.0.2:53, with a DS for `global.` as the real root has, and it is unbound's trust anchor.
/// globaldns (on 127.0.0.1:53) answers unsigned, so without `domain-insecure: "global"` (the line
/// deploy/resolvers/ gives for unbound) every mesh name is bogus: SERVFAIL. With it, answers.
const VALIDATING_SCRIPT: &str = r#"
dir=$1
lo_up || exit 1
start_globaldns "$2" "$dir" || exit 1
/usr/sbin/knotd -c "$dir/knot.conf" >"$dir/knotd.log" 2>&1 &
pids="$pids $!"
i=0
until kdig @127.0.0.2 +time=1 . DNSKEY 2>/dev/null | grep -q 'DNSKEY.*257 3'; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "knotd serves no signed root"; exit 1; }
    sleep 0.1
done
kdig @127.0.0.2 . DNSKEY +noall +answer | grep DNSKEY >"$dir/root.key"
for conf in strict insecure; do
    /usr/sbin/unbound -d -c "$dir/unbound-$conf.conf" >"$dir/unbound-$conf.log" 2>&1 &
    unbound=$!
    i=0
    until kdig @127.0.0.1 -p 5300 +time=1 +retry=0 localhost A 2>/dev/null | grep -q 'status: '; do
        i=$((i + 1))
        [ "$i" -lt 100 ] || { echo "unbound does not answer"; exit 1; }
        sleep 0.1
    done
    section "$conf: the root" kdig @127.0.0.1 -p 5300 +time=5 +retry=0 +dnssec . SOA
    section "$conf: a mesh name" kdig @127.0.0.1 -p 5300 +time=5 +retry=0 httpbin.bar.global A
    kill "$unbound"
    wait "$unbound" 2>/dev/null
done
"#;

fn validating_unbound_conf(dir: &Path, name: &str, insecure: bool) -> String {
    let d = dir.display();
    let insecure = if insecure {
        "domain-insecure: \"global\""
    } else {
        ""
    };
    format!(
        r#"server:
    verbosity: 1
    use-syslog: no
    logfile: ""
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{d}"
    pidfile: "{d}/unbound-{name}.pid"
    interface: 127.0.0.1
    port: 5300
    so-reuseport: no
    num-threads: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "validator iterator"
    root-hints: "{d}/root.hints"
    trust-anchor-file: "{d}/root.key"
    {insecure}
stub-zone:
    name: "global."
    stub-addr: 127.0.0.1
remote-control:
    control-enable: no
"#
    )
}

#[test]
fn a_validating_resolver_needs_global_insecure_and_answers_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("zones")).unwrap();
    write_vm_zones(&d.join("zones"));
    // The root: signed by knotd at load; `global.` delegated with a DS, as in the real root.
    std::fs::write(
        d.join("root.zone"),
        ". 3600 IN SOA ns.root. hostmaster.root. 1 7200 1800 86400 300\n\
         . 3600 IN NS ns.root.\n\
         ns.root. 3600 IN A 127.0.0.2\n\
         global. 3600 IN NS ns.dns.global.\n\
         ns.dns.global. 3600 IN A 127.0.0.1\n\
         global. 3600 IN DS 4826 13 2 1BA7FA0B1D4DC6E7A7B0A6E40B7F9A1C4E4B0B1B6A6AD1B7A5B0C1B6C6A5D4E3\n",
    )
    .unwrap();
    std::fs::write(
        d.join("knot.conf"),
        format!(
            "server:\n    listen: 127.0.0.2@53\n    rundir: \"{0}\"\nlog:\n  - target: \"{0}/knot.log\"\n    any: info\ndatabase:\n    storage: \"{0}\"\nzone:\n  - domain: \".\"\n    storage: \"{0}\"\n    file: \"root.zone\"\n    dnssec-signing: on\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("root.hints"),
        ". 3600000 NS ns.root.\nns.root. 3600000 A 127.0.0.2\n",
    )
    .unwrap();
    for (name, insecure) in [("strict", false), ("insecure", true)] {
        std::fs::write(
            d.join(format!("unbound-{name}.conf")),
            validating_unbound_conf(d, name, insecure),
        )
        .unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_globaldns");
    let args = [d.as_os_str(), bin.as_ref()];
    let run = netns::run_isolated(d, VALIDATING_SCRIPT, &args, Duration::from_secs(90));
    let context = &run.context;
    assert!(run.status.success(), "{context}");
    for conf in ["strict", "insecure"] {
        // Validation is on: the signed root comes back authenticated (AD).
        let (root, _) = run.section(&format!("{conf}: the root"));
        let root = root.join("\n");
        assert!(
            root.contains("status: NOERROR") && root.contains(" ad"),
            "{conf}: {root}\n{context}"
        );
    }
    let (strict, _) = run.section("strict: a mesh name");
    let strict = strict.join("\n");
    assert!(strict.contains("status: SERVFAIL"), "{strict}\n{context}");
    let (insecure, _) = run.section("insecure: a mesh name");
    assert!(
        insecure
            .iter()
            .any(|l| l.starts_with("httpbin.bar.global.") && l.ends_with(VIP)),
        "{}\n{context}",
        insecure.join("\n")
    );
}
