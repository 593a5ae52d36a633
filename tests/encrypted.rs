//! DNS over TLS and over HTTPS (issue 15) with real clients: kdig (`+tls`, `+https`, verifying
//! our certificate against a test CA), a zone transfer over TLS, a certificate replaced on disk
//! and served without a restart, unbound forwarding `global.` to us with `forward-tls-upstream`,
//! and curl over HTTP/1.1.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::kube::pki::Pki;
use support::*;

const HOST: &str = "reviews.default.global";
const VIP: &str = "240.0.0.3";

/// kdig over TLS to `addr`, trusting `ca` for the name `localhost`: stdout and stderr.
fn kdig_tls(addr: SocketAddr, ca: &Path, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=3", "+retry=0"])
        .arg(format!("+tls-ca={}", ca.display()))
        .arg("+tls-hostname=localhost")
        .args(args)
        .output()
        .expect("kdig (Debian package knot-dnsutils) must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn answers_vip(out: &str) -> bool {
    out.contains("status: NOERROR")
        && out
            .lines()
            .any(|l| l.starts_with(&format!("{HOST}.")) && l.trim_end().ends_with(VIP))
}

fn start(zones: &Path, pki: &Pki) -> GlobalDns {
    GlobalDns::start(
        zones,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
            "--tls-cert",
            pki.serving_cert.to_str().unwrap(),
            "--tls-key",
            pki.serving_key.to_str().unwrap(),
        ],
    )
}

#[test]
fn kdig_over_tls_gets_the_same_answers_and_transfers_and_a_new_certificate_is_served() {
    let zones = tempfile::tempdir().unwrap();
    std::fs::write(
        zones.path().join("r.yaml"),
        service_entry("r", &[HOST], &[VIP]),
    )
    .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::create(certs.path(), "127.0.0.1".parse().unwrap());
    let server = start(zones.path(), &pki);
    let tls = server.tls[0];

    let out = kdig_tls(tls, &pki.ca_cert, &["+tls", HOST, "A"]);
    assert!(answers_vip(&out), "{out}");
    assert!(out.contains(";; TLS session (TLS1.3)"), "{out}");
    // The same answer as over UDP, a missing name too.
    let nx = kdig_tls(tls, &pki.ca_cert, &["+tls", "nope.default.global", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    // A zone transfer over TLS (XoT, RFC 9103).
    let axfr = kdig_tls(tls, &pki.ca_cert, &["+tls", "global", "AXFR"]);
    assert!(
        axfr.contains(&format!("{HOST}.")) && axfr.contains("1 messages"),
        "{axfr}"
    );

    // A new certificate from another CA, written over the old files: served without a restart.
    let renewed_dir = tempfile::tempdir().unwrap();
    let renewed = Pki::create(renewed_dir.path(), "127.0.0.1".parse().unwrap());
    std::fs::copy(&renewed.serving_cert, &pki.serving_cert).unwrap();
    std::fs::copy(&renewed.serving_key, &pki.serving_key).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || answers_vip(&kdig_tls(
            tls,
            &renewed.ca_cert,
            &["+tls", HOST, "A"]
        ))),
        "{}",
        server.log_text()
    );
    let old_ca = kdig_tls(tls, &pki.ca_cert, &["+tls", HOST, "A"]);
    assert!(!answers_vip(&old_ca), "the old CA still verifies: {old_ca}");
    assert!(server.log_text().contains("TLS certificate reloaded"));

    // A broken renewal keeps the certificate being served.
    std::fs::write(&pki.serving_cert, "not a certificate").unwrap();
    assert!(eventually(Duration::from_secs(10), || server
        .log_text()
        .contains("cannot reload the TLS certificate")));
    assert!(answers_vip(&kdig_tls(
        tls,
        &renewed.ca_cert,
        &["+tls", HOST, "A"]
    )));
}

#[test]
fn unbound_forwards_global_over_tls() {
    let zones = tempfile::tempdir().unwrap();
    std::fs::write(
        zones.path().join("r.yaml"),
        service_entry("r", &[HOST], &[VIP]),
    )
    .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::create(certs.path(), "127.0.0.1".parse().unwrap());
    let server = start(zones.path(), &pki);
    let tls = server.tls[0];

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = dir.path().display();
    let conf = format!(
        r#"server:
    verbosity: 1
    use-syslog: no
    logfile: ""
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    interface: 127.0.0.1
    port: {port}
    so-reuseport: no
    num-threads: 1
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    domain-insecure: "global"
    tls-cert-bundle: "{ca}"
forward-zone:
    name: "global."
    forward-addr: {ip}@{tls_port}#localhost
    forward-tls-upstream: yes
remote-control:
    control-enable: no
"#,
        ca = pki.ca_cert.display(),
        ip = tls.ip(),
        tls_port = tls.port(),
    );
    std::fs::write(dir.path().join("unbound.conf"), conf).unwrap();
    let log = std::fs::File::create(dir.path().join("unbound.log")).unwrap();
    let mut child = Command::new("/usr/sbin/unbound")
        .args(["-d", "-c"])
        .arg(dir.path().join("unbound.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("unbound (Debian package unbound)");
    let unbound: SocketAddr = ([127, 0, 0, 1], port).into();
    let ok = eventually(Duration::from_secs(15), || {
        answers_vip(&kdig(unbound, &[HOST, "A"]))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        // The forward address is the TLS port, which speaks nothing else.
        "{}\n--- unbound:\n{}\n--- globaldns:\n{}",
        kdig(unbound, &[HOST, "A"]),
        std::fs::read_to_string(dir.path().join("unbound.log")).unwrap_or_default(),
        server.log_text()
    );
}

#[test]
fn dns_over_https_answers_post_and_get_over_http2_and_http1() {
    let zones = tempfile::tempdir().unwrap();
    std::fs::write(
        zones.path().join("r.yaml"),
        service_entry("r", &[HOST], &[VIP]),
    )
    .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::create(certs.path(), "127.0.0.1".parse().unwrap());
    let server = start(zones.path(), &pki);
    let https = server.https[0];

    // kdig speaks HTTP/2 (nghttp2): POST, then GET.
    for method in ["+https", "+https-get"] {
        let out = kdig_tls(https, &pki.ca_cert, &[method, HOST, "A"]);
        assert!(answers_vip(&out), "{method}: {out}");
        assert!(out.contains("HTTP"), "{method}: {out}");
    }
    let nx = kdig_tls(https, &pki.ca_cert, &["+https", "nope.default.global", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");

    // curl over HTTP/1.1, GET with the message in ?dns= (RFC 8484 §4.1), ID 0.
    let query = query_message(&format!("{HOST}."), hickory_proto::rr::RecordType::A, None);
    let mut wire = query.to_vec().unwrap();
    wire[..2].copy_from_slice(&[0, 0]);
    let param = data_encoding::BASE64URL_NOPAD.encode(&wire);
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--http1.1",
            "--include",
            "--cacert",
        ])
        .arg(&pki.ca_cert)
        .arg(format!(
            "https://localhost:{}/dns-query?dns={param}",
            https.port()
        ))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", https.port()),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/dns-message"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-control: max-age=30"),
        "{text}"
    );
    let body = &out.stdout[out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4..];
    let reply = hickory_proto::op::Message::from_vec(body).unwrap();
    assert_eq!(answer_ips(&reply), [VIP]);

    // Not a DNS message: 400, and other paths 404.
    for (url, code) in [
        (
            format!("https://localhost:{}/dns-query?dns=!!", https.port()),
            "400",
        ),
        (format!("https://localhost:{}/other", https.port()), "404"),
    ] {
        let out = Command::new("curl")
            .args([
                "--silent",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code}",
                "--cacert",
            ])
            .arg(&pki.ca_cert)
            .arg(&url)
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", https.port()),
            ])
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), code, "{url}");
    }
}
