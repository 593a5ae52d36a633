//! Zone transfers out (issue 15): AXFR and IXFR of every served zone, the transfer ACL, and
//! NOTIFY, against real secondaries from Debian (NSD, Knot, BIND) and kdig.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A child process killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HOST: &str = "reviews.default.global";
const VIP: &str = "240.0.0.3";

/// The TSIG key the secondaries share with globaldns, as tsig-keygen writes it.
const SECRET: &str = "k2bXw1QsWhrrUQnlA5nRUKNW5wtKKO9FC6VZaLqf/1Y=";
const KEY_FILE: &str = "key \"transfer\" {\n\talgorithm hmac-sha256;\n\tsecret \"k2bXw1QsWhrrUQnlA5nRUKNW5wtKKO9FC6VZaLqf/1Y=\";\n};\n";

/// Hosts beside HOST, so that a transfer takes several messages (each signed with TSIG).
const MANY: usize = 2000;

fn many_hosts(dir: &Path) {
    let entries: String = (0..MANY)
        .map(|i| {
            service_entry(
                &format!("h{i}"),
                &[&format!("h{i}.many.global")],
                &[&format!("240.1.{}.{}", i / 250, i % 250 + 1)],
            )
        })
        .collect();
    std::fs::write(dir.join("many.yaml"), entries).unwrap();
}

fn zones() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviews.yaml"),
        service_entry("reviews", &[HOST], &[VIP]),
    )
    .unwrap();
    dir
}

/// The record lines of kdig's output (`owner TTL class type data`; of a transfer, all of them),
/// tabs and runs of spaces made single.
fn records(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The answer section of kdig's output for a query, as [`records`] writes them.
fn answer_section(out: &str) -> Vec<String> {
    let lines = out
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION:"));
    let section: Vec<&str> = lines.skip(1).take_while(|l| !l.starts_with(";;")).collect();
    records(&section.join("\n"))
}

/// kdig from `source` to `server`: its stdout and stderr (where it reports an error rcode of a
/// transfer).
fn kdig_from(server: std::net::SocketAddr, source: &str, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "-b",
            source,
            "+time=2",
            "+retry=1",
        ])
        .args(args)
        .output()
        .expect("kdig (Debian package knot-dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn axfr_sends_the_whole_zone_between_two_soas_to_allowed_clients_only() {
    let dir = zones();
    let server = GlobalDns::start(
        dir.path(),
        &["--allow-transfer", "127.0.0.2/32", "--pool", "240.0.0.0/4"],
    );
    let from = |source: &str, args: &[&str]| kdig_from(server.addr, source, args);
    let refused = from("127.0.0.1", &["global", "AXFR"]);
    assert!(refused.contains("REFUSED"), "{refused}");

    let axfr = from("127.0.0.2", &["global", "AXFR"]);
    let lines = records(&axfr);
    assert!(lines.len() >= 5, "{axfr}");
    assert!(
        lines[0].starts_with("global. 30 IN SOA ns.dns.global."),
        "{axfr}"
    );
    assert_eq!(lines.first(), lines.last(), "SOA first and last: {axfr}");
    for expected in [
        format!("{HOST}. 30 IN A {VIP}"),
        "global. 30 IN NS ns.dns.global.".into(),
        "ns.dns.global. 30 IN A 127.0.0.1".into(),
    ] {
        assert!(lines.contains(&expected), "{expected} missing:\n{axfr}");
    }
    // The reverse zone of the pool's part holding the VIP is served too.
    let reverse = from("127.0.0.2", &["240.in-addr.arpa", "AXFR"]);
    assert!(
        records(&reverse).contains(&format!("3.0.0.240.in-addr.arpa. 30 IN PTR {HOST}.")),
        "{reverse}"
    );

    // Not a zone apex, or not ours: NOTAUTH, never forwarded. AXFR over UDP: FORMERR.
    for name in ["default.global", "example.com"] {
        let out = from("127.0.0.2", &[name, "AXFR"]);
        assert!(out.contains("NOTAUTH"), "{name}: {out}");
    }
    let udp = from("127.0.0.2", &["+notcp", "global", "AXFR"]);
    assert!(udp.contains("FORMERR"), "{udp}");

    // IXFR from a client that is up to date, or over UDP: the current SOA alone (RFC 1995).
    let soa = &lines[0];
    let serial: u32 = soa.split(' ').nth(6).unwrap().parse().unwrap();
    for args in [
        vec![
            "+tcp".to_string(),
            "global".into(),
            format!("IXFR={serial}"),
        ],
        vec!["+notcp".to_string(), "global".into(), "IXFR=1".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = from("127.0.0.2", &args);
        assert_eq!(records(&out), std::slice::from_ref(soa), "{args:?}: {out}");
    }
    // Behind, over TCP, with no journal yet: the whole zone, AXFR style (RFC 1995 §4).
    let behind = from("127.0.0.2", &["+tcp", "global", "IXFR=1"]);
    assert_eq!(records(&behind), lines, "{behind}");
}

/// One Debian secondary: its configuration for `primary` as `(file name, text)` in `dir`, and
/// the command that runs it in the foreground.
struct Secondary {
    conf: fn(&Path, u16, std::net::SocketAddr) -> String,
    file: &'static str,
    command: fn(&Path) -> Vec<String>,
}

fn nsd_conf(dir: &Path, port: u16, primary: std::net::SocketAddr) -> String {
    let d = dir.display();
    let (ip, p) = (primary.ip(), primary.port());
    format!(
        r#"server:
    ip-address: 127.0.0.1@{port}
    server-count: 1
    username: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    zonelistfile: "{d}/zone.list"
    logfile: "{d}/secondary.log"
    verbosity: 2
remote-control:
    control-enable: no
key:
    name: "transfer"
    algorithm: hmac-sha256
    secret: "{SECRET}"
zone:
    name: global
    zonefile: global.zone
    request-xfr: {ip}@{p} transfer
    allow-notify: {ip} transfer
"#
    )
}

fn knot_conf(dir: &Path, port: u16, primary: std::net::SocketAddr) -> String {
    let d = dir.display();
    let (ip, p) = (primary.ip(), primary.port());
    format!(
        r#"server:
    listen: 127.0.0.1@{port}
    rundir: "{d}"
log:
  - target: "{d}/secondary.log"
    any: info
database:
    storage: "{d}"
key:
  - id: transfer
    algorithm: hmac-sha256
    secret: {SECRET}
remote:
  - id: primary
    address: {ip}@{p}
    key: transfer
acl:
  - id: notify
    address: {ip}
    key: transfer
    action: notify
zone:
  - domain: global
    storage: "{d}"
    master: primary
    acl: notify
"#
    )
}

fn named_conf(dir: &Path, port: u16, primary: std::net::SocketAddr) -> String {
    let d = dir.display();
    let (ip, p) = (primary.ip(), primary.port());
    format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "transfer" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
logging {{
    channel file {{ file "{d}/secondary.log"; severity info; print-time yes; }};
    category default {{ file; }};
    category xfer-in {{ file; }};
    category notify {{ file; }};
}};
zone "global" {{
    type secondary;
    primaries {{ {ip} port {p} key "transfer"; }};
    file "{d}/global.db";
}};
"#
    )
}

const NSD: Secondary = Secondary {
    conf: nsd_conf,
    file: "nsd.conf",
    command: |d| {
        vec![
            "/usr/sbin/nsd".into(),
            "-d".into(),
            "-c".into(),
            d.join("nsd.conf").display().to_string(),
        ]
    },
};
const KNOT: Secondary = Secondary {
    conf: knot_conf,
    file: "knot.conf",
    command: |d| {
        vec![
            "/usr/sbin/knotd".into(),
            "-c".into(),
            d.join("knot.conf").display().to_string(),
        ]
    },
};
const BIND: Secondary = Secondary {
    conf: named_conf,
    file: "named.conf",
    command: |d| {
        vec![
            "/usr/sbin/named".into(),
            "-g".into(),
            "-c".into(),
            d.join("named.conf").display().to_string(),
        ]
    },
};

/// The secondary slaves `global.` from globaldns (first AXFR), then a new ServiceEntry reaches
/// it within seconds, long before its refresh timer (7,200 s): through NOTIFY, signed with the
/// zone's key (NSD and Knot are told to take it only so).
fn secondary_follows(kind: Secondary) {
    let zones_dir = zones();
    many_hosts(zones_dir.path());
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), KEY_FILE).unwrap();
    let zone_key = format!("global={}", key_file.path().display());
    let port = free_port();
    let secondary_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let server = GlobalDns::start(
        zones_dir.path(),
        &[
            "--notify",
            &secondary_addr.to_string(),
            "--pool",
            "240.0.0.0/4",
            "--transfer-key",
            &zone_key,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(kind.file),
        (kind.conf)(dir.path(), port, server.addr),
    )
    .unwrap();
    let command = (kind.command)(dir.path());
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let _child = Reaped(
        Command::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", command[0])),
    );
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        format!(
            "--- secondary:\n{}{}\n--- globaldns:\n{}",
            read("stderr.log"),
            read("secondary.log"),
            server.log_text()
        )
    };
    let answers = |name: &str| {
        let out = kdig(secondary_addr, &[name, "A"]);
        if out.contains(" aa") {
            answer_section(&out)
        } else {
            Vec::new()
        }
    };
    assert!(
        eventually(Duration::from_secs(20), || {
            answers(HOST) == [format!("{HOST}. 30 IN A {VIP}")]
                && answers("h1999.many.global") == ["h1999.many.global. 30 IN A 240.1.7.250"]
        }),
        "first transfer: {:?}\n{}",
        kdig(secondary_addr, &[HOST, "A"]),
        logs()
    );
    std::fs::write(
        zones_dir.path().join("web.yaml"),
        service_entry("web", &["web.default.global"], &["240.0.0.9"]),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || answers("web.default.global")
            == ["web.default.global. 30 IN A 240.0.0.9"]),
        "after NOTIFY\n{}",
        logs()
    );
    assert!(
        server.log_text().contains("NOTIFY acknowledged"),
        "{}",
        logs()
    );
    // What followed the NOTIFY was an IXFR answered from the journal: the one new host, not the
    // 2,000 it already had.
    let incremental = server
        .log_text()
        .lines()
        .any(|l| l.contains("zone transferred") && l.contains("incremental=true"));
    assert!(incremental, "no incremental transfer\n{}", logs());
}

#[test]
fn nsd_slaves_global_and_follows_notify() {
    secondary_follows(NSD);
}

#[test]
fn knot_slaves_global_and_follows_notify() {
    secondary_follows(KNOT);
}

#[test]
fn bind_slaves_global_and_follows_notify() {
    secondary_follows(BIND);
}

/// With a key configured, only requests signed with it transfer; kdig checks the signature of
/// every message of the reply (a zone of several messages).
#[test]
fn with_a_key_transfers_need_its_signature_and_every_message_is_signed() {
    let dir = zones();
    many_hosts(dir.path());
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), KEY_FILE).unwrap();
    let server = GlobalDns::start(
        dir.path(),
        &["--transfer-key", key_file.path().to_str().unwrap()],
    );
    let key = format!("hmac-sha256:transfer:{SECRET}");
    let signed = kdig_from(server.addr, "127.0.0.1", &["-y", &key, "global", "AXFR"]);
    assert!(
        !signed.contains(";; ERROR") && !signed.contains(";; WARNING"),
        "{signed}"
    );
    let messages: usize = signed
        .lines()
        .find_map(|l| {
            l.strip_prefix(";; Received ")?
                .split(" (")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{signed}"));
    assert!(messages > 1, "one message only: {signed}");
    let tsigs = signed.lines().filter(|l| l.contains("\tTSIG\t")).count();
    assert_eq!(tsigs, messages, "every message signed: {signed}");
    assert!(
        records(&signed)
            .iter()
            .any(|r| r == "h1999.many.global. 30 IN A 240.1.7.250"),
        "{signed}"
    );

    let wrong = format!(
        "hmac-sha256:transfer:{}",
        "d3Jvbmcga2V5IHdyb25nIGtleSB3cm9uZyBrZXkh"
    );
    for args in [vec!["global", "AXFR"], vec!["-y", &wrong, "global", "AXFR"]] {
        let out = kdig_from(server.addr, "127.0.0.1", &args);
        assert!(out.contains("NOTAUTH"), "{args:?}: {out}");
    }
}

/// The serial moves with the content only: a republish that changes nothing (here a second
/// entry declaring the same host and address) keeps it, so secondaries are not sent
/// transferring the same zone again; a new host moves it forward.
#[test]
fn the_serial_changes_with_the_content_only() {
    let dir = zones();
    let server = GlobalDns::start(dir.path(), &[]);
    let serial = || -> u32 {
        let out = kdig(server.addr, &["+short", "global", "SOA"]);
        out.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let published = || server.log_text().matches("name table published").count();
    let first = serial();
    let before = published();
    std::thread::sleep(Duration::from_millis(1100)); // a clock-based serial would move now
    std::fs::write(
        dir.path().join("same.yaml"),
        service_entry("same", &[HOST], &[VIP]),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || published() > before),
        "{}",
        server.log_text()
    );
    assert_eq!(serial(), first, "same content, same serial");
    std::fs::write(
        dir.path().join("new.yaml"),
        service_entry("new", &["new.default.global"], &["240.0.0.8"]),
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || serial() != first));
    let second = serial();
    assert!(second.wrapping_sub(first) as i32 > 0, "forward");

    // A secondary at the first serial asks for what changed since (RFC 1995 §4): the new SOA,
    // then the step from the first serial (its SOA, nothing deleted, the second SOA, the new
    // host and its port's SRV record), then the new SOA again. Over UDP it gets the SOA alone (§2).
    let ixfr = kdig(server.addr, &["+tcp", "global", &format!("IXFR={first}")]);
    let soa = |serial: u32| {
        let full = kdig(server.addr, &["global", "SOA"]);
        let line = answer_section(&full).remove(0);
        let old = line.split_whitespace().nth(6).unwrap().to_string();
        line.replacen(&old, &serial.to_string(), 1)
    };
    let expected = [
        soa(second),
        soa(first),
        soa(second),
        "new.default.global. 30 IN A 240.0.0.8".to_string(),
        "_http._tcp.new.default.global. 30 IN SRV 0 100 80 new.default.global.".to_string(),
        soa(second),
    ];
    assert_eq!(records(&ixfr), expected, "{ixfr}");
    let udp = kdig(server.addr, &["+notcp", "global", &format!("IXFR={first}")]);
    assert_eq!(records(&udp), [soa(second)], "{udp}");
}

/// A key given for one zone opens that zone only, and that zone only to it: other zones keep
/// their own rules (here the pool's reverse zone, with a key of its own). A key for a zone we
/// do not serve stops the server at start, since the zone it was meant for would stay open.
#[test]
fn zone_keys_open_their_own_zone() {
    let dir = zones();
    let files = tempfile::tempdir().unwrap();
    let (global_key, reverse_key) = (files.path().join("g.key"), files.path().join("r.key"));
    std::fs::write(&global_key, KEY_FILE).unwrap();
    let other = "c2Vjb25kIGtleSBzZWNvbmQga2V5IHNlY29uZCBrZXk=";
    let reverse_text =
        format!("key \"reverse\" {{ algorithm hmac-sha256; secret \"{other}\"; }};\n");
    std::fs::write(&reverse_key, reverse_text).unwrap();
    let server = GlobalDns::start(
        dir.path(),
        &[
            "--transfer-key",
            &format!("global={}", global_key.display()),
            "--transfer-key",
            &format!("240.in-addr.arpa.={}", reverse_key.display()),
        ],
    );
    let global = format!("hmac-sha256:transfer:{SECRET}");
    let reverse = format!("hmac-sha256:reverse:{other}");
    let transfer = |key: Option<&str>, zone: &str| {
        let mut args = Vec::new();
        if let Some(key) = key {
            args.extend(["-y", key]);
        }
        args.extend([zone, "AXFR"]);
        kdig_from(server.addr, "127.0.0.1", &args)
    };
    let complete = |out: &str| records(out).len() >= 3 && !out.contains("NOTAUTH");
    let out = transfer(Some(&global), "global");
    assert!(complete(&out), "{out}");
    let out = transfer(Some(&reverse), "240.in-addr.arpa");
    assert!(complete(&out), "{out}");
    for (key, zone) in [
        (None, "global"),
        (Some(&reverse), "global"),
        (Some(&global), "240.in-addr.arpa"),
    ] {
        let out = transfer(key.map(String::as_str), zone);
        assert!(out.contains("NOTAUTH"), "{key:?} {zone}: {out}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_globaldns"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--resolv-conf",
            "/dev/null",
            "--zones",
        ])
        .arg(dir.path())
        .arg("--transfer-key")
        .arg(format!("globl={}", global_key.display()))
        .arg("--state")
        .arg(files.path().join("state.json"))
        .output()
        .expect("run globaldns");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("globl. is not a served zone"), "{stderr}");
}
