//! Test support: run the real `globaldns` binary on an ephemeral loopback port, and query it
//! over real sockets with hickory-proto messages or with `kdig`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

pub mod apiserver;
pub mod kube;
pub mod netns;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A running server process, killed on drop. Its stderr (the log) goes to a file.
pub struct GlobalDns {
    child: Child,
    /// The first of `addrs`: 127.0.0.1 and a free port.
    pub addr: SocketAddr,
    /// One per `--listen`, in order.
    pub addrs: Vec<SocketAddr>,
    /// One per `--tls-listen` (DNS over TLS), in order.
    pub tls: Vec<SocketAddr>,
    /// One per `--https-listen` (DNS over HTTPS), in order.
    pub https: Vec<SocketAddr>,
    /// The HTTP address of /metrics, /healthz and /readyz, when started with --metrics.
    pub metrics: Option<SocketAddr>,
    pub log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl GlobalDns {
    /// Starts `globaldns` serving `zones` with no upstream unless `args` names one.
    pub fn start(zones: &Path, args: &[&str]) -> GlobalDns {
        GlobalDns::start_wrapped(&[], zones, args)
    }

    /// As [`GlobalDns::start`], run through `wrapper` (a command and its arguments, such as
    /// `setpriv` to run as another user).
    pub fn start_wrapped(wrapper: &[&str], zones: &Path, args: &[&str]) -> GlobalDns {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("stderr.log");
        let binary = env!("CARGO_BIN_EXE_globaldns");
        let mut cmd = match wrapper {
            [] => Command::new(binary),
            [program, rest @ ..] => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(binary);
                cmd
            }
        };
        if !args.contains(&"--state") && !args.contains(&"--kubeconfig") {
            // Never next to the zones directory: that may be the repository's zones/.
            cmd.arg("--state").arg(log_dir.path().join("state.json"));
        }
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--resolv-conf",
            "/dev/null",
            "--workers",
            "2",
        ])
        .arg("--zones")
        .arg(zones)
        .args(args)
        // GLOBALDNS_TEST_LOG (say `info,globaldns::source=debug`) when a run needs more.
        .env(
            "RUST_LOG",
            std::env::var("GLOBALDNS_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("spawn globaldns");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let listens = 1 + args.iter().filter(|a| **a == "--listen").count();
        std::thread::spawn(move || {
            // "metrics on ADDR" (with --metrics), "dns-over-tls on ADDR" for each --tls-listen,
            // then "listening on ADDR" for each --listen.
            let mut metrics = None;
            let mut tls = Vec::new();
            let mut https = Vec::new();
            let mut listening = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("metrics on ") {
                    metrics = addr.parse().ok();
                } else if let Some(addr) = line.strip_prefix("dns-over-tls on ") {
                    tls.extend(addr.parse::<SocketAddr>().ok());
                } else if let Some(addr) = line.strip_prefix("dns-over-https on ") {
                    https.extend(addr.parse::<SocketAddr>().ok());
                } else {
                    listening.push(line);
                }
                if listening.len() == listens {
                    break;
                }
            }
            let _ = tx.send((metrics, tls, https, listening));
        });
        let (metrics, tls, https, lines) =
            rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let addrs: Option<Vec<SocketAddr>> = (lines.iter())
            .map(|l| l.trim().strip_prefix("listening on ")?.parse().ok())
            .collect();
        let Some(addrs) = addrs.filter(|a| a.len() == listens) else {
            let _ = child.kill();
            panic!(
                "globaldns did not start: {lines:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        GlobalDns {
            child,
            addr: addrs[0],
            addrs,
            tls,
            https,
            metrics,
            log,
            _log_dir: log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// File descriptors the server holds open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GlobalDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's zones/ directory.
pub fn repo_zones() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("zones")
}

/// A copy of zones/ that a test may change.
pub fn zones_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_zones()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[derive(Clone, Copy, Debug)]
pub enum Proto {
    Udp,
    Tcp,
}

pub fn query_message(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut msg = Message::new(
        rand::random(),
        hickory_proto::op::MessageType::Query,
        OpCode::Query,
    );
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg
}

/// Sends raw bytes and returns the raw reply.
pub fn exchange_raw(addr: SocketAddr, packet: &[u8], proto: Proto) -> Option<Vec<u8>> {
    match proto {
        Proto::Udp => {
            let local = if addr.is_ipv6() {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            };
            let sock = UdpSocket::bind(local).unwrap();
            sock.set_read_timeout(Some(TIMEOUT)).unwrap();
            sock.send_to(packet, addr).unwrap();
            let mut buf = vec![0u8; 65535];
            let (n, _) = sock.recv_from(&mut buf).ok()?;
            buf.truncate(n);
            Some(buf)
        }
        Proto::Tcp => {
            let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(packet);
            stream.write_all(&framed).unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).ok()?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut buf).ok()?;
            Some(buf)
        }
    }
}

/// Sends a message and decodes the reply, checking it answers this message.
pub fn exchange(addr: SocketAddr, msg: &Message, proto: Proto) -> Message {
    let raw = exchange_raw(addr, &msg.to_vec().unwrap(), proto).expect("no reply");
    let reply = Message::from_vec(&raw).expect("reply decodes");
    assert_eq!(reply.metadata.id, msg.metadata.id, "reply ID");
    reply
}

pub fn query(addr: SocketAddr, name: &str, qtype: RecordType, proto: Proto) -> Message {
    exchange(addr, &query_message(name, qtype, Some(1232)), proto)
}

/// Addresses in the answer section, as text, sorted.
pub fn answer_ips(msg: &Message) -> Vec<String> {
    let mut ips: Vec<String> = msg
        .answers
        .iter()
        .filter_map(|r| r.data.ip_addr())
        .map(|ip| ip.to_string())
        .collect();
    ips.sort();
    ips
}

/// The A records of `name` right now (over UDP), as text, sorted.
pub fn a_ips(server: &GlobalDns, name: &str) -> Vec<String> {
    answer_ips(&query(server.addr, name, RecordType::A, Proto::Udp))
}

/// Whether `name` resolves to exactly `ip` (A) right now.
pub fn resolves_to(server: &GlobalDns, name: &str, ip: &str) -> bool {
    a_ips(server, name) == [ip]
}

/// Whether `name` (A) is NXDOMAIN right now.
pub fn nxdomain(server: &GlobalDns, name: &str) -> bool {
    let reply = query(server.addr, name, RecordType::A, Proto::Udp);
    reply.metadata.response_code == hickory_proto::op::ResponseCode::NXDomain
}

/// Runs kdig against `addr` with `args`; its standard output.
pub fn kdig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=2", "+retry=1"])
        .args(args)
        .output()
        .expect("kdig (Debian package knot-dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback port free for both UDP and TCP when this returns (released again: the caller
/// retries if someone takes it meanwhile).
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// An address where nothing listens: a port bound and released on a loopback address no other
/// test binds, so no server started meanwhile can take it over.
pub fn dead_upstream() -> SocketAddr {
    UdpSocket::bind("127.88.77.66:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs `dnsctl --state STATE ARGS...`; its exit code, stdout and stderr.
pub fn dnsctl(state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dnsctl"))
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .expect("run dnsctl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A ServiceEntry manifest (a document of a zones file, namespace `test`) for `hosts` with
/// `addresses` (none: the allocator gives a VIP).
pub fn service_entry(name: &str, hosts: &[&str], addresses: &[&str]) -> String {
    format!(
        "---\n{}",
        kube::service_entry_yaml("v1", "test", name, hosts, addresses)
    )
}

/// A plain HTTP/1.0 GET: status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of the sample `series` (name and labels exactly as exposed), 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Makes a FIFO at `path` (to stand where a regular file is expected).
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}
