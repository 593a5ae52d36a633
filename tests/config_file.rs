//! `--config FILE`: the real binary reads flag values from YAML or TOML, and the command line
//! wins over the file.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use hickory_proto::rr::RecordType;
use support::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn answer_ttl(server: &GlobalDns) -> u32 {
    let reply = query(
        server.addr,
        "reviews.default.global",
        RecordType::A,
        Proto::Udp,
    );
    assert_eq!(answer_ips(&reply), ["240.0.0.3"]);
    reply.answers[0].ttl
}

#[test]
fn file_sets_flags_the_command_line_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "globaldns.yaml",
        "# answers for a minute\nttl: 7\n",
    );
    let server = GlobalDns::start(&repo_zones(), &["--config", config.to_str().unwrap()]);
    assert_eq!(answer_ttl(&server), 7);
}

#[test]
fn command_line_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // The harness passes --listen 127.0.0.1:0: binding the file's address would fail.
    let yaml = write(
        dir.path(),
        "globaldns.yml",
        "ttl: 7\nzone: [global]\nlisten: 192.0.2.1:53\n",
    );
    let server = GlobalDns::start(
        &repo_zones(),
        &["--config", yaml.to_str().unwrap(), "--ttl", "9"],
    );
    assert_eq!(answer_ttl(&server), 9);
    drop(server);

    let toml = write(
        dir.path(),
        "globaldns.toml",
        "ttl = 7\nzone = [\"global\"]\nlisten = \"192.0.2.1:53\"\n",
    );
    let server = GlobalDns::start(
        &repo_zones(),
        &["--config", toml.to_str().unwrap(), "--ttl=9"],
    );
    assert_eq!(answer_ttl(&server), 9);
}

#[test]
fn unknown_key_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "globaldns.yaml", "ttl: 7\ncache-sise: 10\n");
    let out = Command::new(env!("CARGO_BIN_EXE_globaldns"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--resolv-conf", "/dev/null"])
        .arg("--zones")
        .arg(repo_zones())
        .arg("--state")
        .arg(dir.path().join("state.json"))
        .output()
        .expect("run globaldns");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "it must not start serving");
    assert!(stderr.contains("unknown key `cache-sise`"), "{stderr}");
    assert!(
        stderr.contains(&config.display().to_string()),
        "names the file: {stderr}"
    );
}
