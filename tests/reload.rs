//! Hot reload of the zones directory, and broken manifests next to good ones.

mod support;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::*;

const WITHIN: Duration = Duration::from_secs(5);

fn entry(host: &str, address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: x, namespace: ns}}\nspec:\n  hosts: [{host}]\n  addresses: [{address}]\n"
    )
}

fn is_nxdomain(server: &GlobalDns, name: &str) -> bool {
    query(server.addr, name, RecordType::A, Proto::Udp)
        .metadata
        .response_code
        == ResponseCode::NXDomain
}

#[test]
fn added_changed_and_removed_files_show_within_seconds() {
    let zones = zones_copy();
    let server = GlobalDns::start(zones.path(), &["--rescan-interval", "60"]);
    assert!(is_nxdomain(&server, "productpage.default.global."));

    let file = zones.path().join("productpage.yaml");
    std::fs::write(&file, entry("productpage.default.global", "240.0.0.20")).unwrap();
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "productpage.default.global.",
            "240.0.0.20"
        )),
        "add"
    );

    std::fs::write(&file, entry("productpage.default.global", "240.0.0.21")).unwrap();
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "productpage.default.global.",
            "240.0.0.21"
        )),
        "change"
    );

    std::fs::remove_file(&file).unwrap();
    assert!(
        eventually(WITHIN, || is_nxdomain(
            &server,
            "productpage.default.global."
        )),
        "remove"
    );
    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
}

#[test]
fn changes_update_the_table_in_place_and_a_broken_edit_takes_nothing_down() {
    let zones = zones_copy();
    let server = GlobalDns::start(
        zones.path(),
        &["--rescan-interval", "60", "--metrics", "127.0.0.1:0"],
    );
    let http = server.metrics.expect("metrics address on stdout");
    let tables = |path: &str| {
        let metrics = http_get(http, "/metrics").1;
        sample(
            &metrics,
            &format!("globaldns_table_updates_total{{path=\"{path}\"}}"),
        )
    };
    assert_eq!((tables("full"), tables("incremental")), (1.0, 0.0));

    let file = zones.path().join("productpage.yaml");
    std::fs::write(&file, entry("productpage.default.global", "240.0.0.20")).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "productpage.default.global.",
        "240.0.0.20"
    )));
    // A half-written or broken edit: what the file declared before stays served.
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: {hosts: [",
    )
    .unwrap();
    assert!(eventually(WITHIN, || server
        .log_text()
        .contains("serving what it declared when it last parsed")));
    assert!(resolves_to(
        &server,
        "productpage.default.global.",
        "240.0.0.20"
    ));
    std::fs::write(&file, entry("productpage.default.global", "240.0.0.21")).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "productpage.default.global.",
        "240.0.0.21"
    )));
    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
    // Only the first table was built whole; every change since changed it in place.
    assert_eq!(tables("full"), 1.0);
    assert!(tables("incremental") >= 2.0, "{}", tables("incremental"));
}

#[test]
fn nested_directories_are_watched_too() {
    let zones = zones_copy();
    let server = GlobalDns::start(zones.path(), &["--rescan-interval", "60"]);
    std::fs::create_dir_all(zones.path().join("team-a/prod")).unwrap();
    std::fs::write(
        zones.path().join("team-a/prod/svc.yml"),
        entry("svc.team-a.global", "240.0.0.30"),
    )
    .unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "svc.team-a.global.",
        "240.0.0.30"
    )));
}

#[test]
fn broken_manifest_is_skipped_and_named_in_the_log() {
    let zones = zones_copy();
    let broken = zones.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b}\nspec:\n  hosts: [broken.global]\n  addresses: [240.0.0.40\n").unwrap();
    let bad_address = zones.path().join("bad-address.yaml");
    std::fs::write(&bad_address, entry("bad.global", "not-an-address")).unwrap();
    let server = GlobalDns::start(zones.path(), &[]);

    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
    assert!(is_nxdomain(&server, "broken.global."));
    assert!(is_nxdomain(&server, "bad.global."));
    let log = server.log_text();
    assert!(
        log.contains("broken.yaml") && log.contains("skipping manifest"),
        "{log}"
    );
    assert!(
        log.contains("bad-address.yaml") && log.contains("not-an-address"),
        "{log}"
    );

    // One log line per failure, holding none of the file's text; not repeated while the file is
    // unchanged, even when other files change.
    let line = log.lines().find(|l| l.contains("broken.yaml")).unwrap();
    assert!(!line.contains("240.0.0.40"), "{line}");
    std::fs::write(
        zones.path().join("other.yaml"),
        entry("other.global", "240.0.0.41"),
    )
    .unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "other.global.",
        "240.0.0.41"
    )));
    let log = server.log_text();
    assert_eq!(log.matches("skipping manifest file=").count(), 2, "{log}");
    assert_eq!(log.matches("failed=2").count(), 2, "still counted: {log}");

    // Fixing the file brings its names in; the server never stopped serving.
    std::fs::write(&broken, entry("broken.global", "240.0.0.40")).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "broken.global.",
        "240.0.0.40"
    )));
}

/// A Kubernetes ConfigMap volume changes by pointing its hidden `..data` link at a new hidden
/// directory: the visible files are links through it and get no event of their own. Events
/// naming hidden entries or directories make the pass read the whole tree (no periodic rescan
/// here to fall back on).
#[test]
fn a_configmap_volume_swap_shows_through_events() {
    use std::os::unix::fs::symlink;
    let zones = tempfile::tempdir().unwrap();
    let dir = zones.path();
    let version = |n: u32, address: &str| {
        let d = dir.join(format!("..2026_12_02_v{n}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("mesh.yaml"), entry("cm.ns.global", address)).unwrap();
        d
    };
    let v1 = version(1, "240.0.0.61");
    symlink(v1.file_name().unwrap(), dir.join("..data")).unwrap();
    symlink("..data/mesh.yaml", dir.join("mesh.yaml")).unwrap();
    let server = GlobalDns::start(dir, &["--rescan-interval", "3600"]);
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "cm.ns.global.",
        "240.0.0.61"
    )));
    // As kubelet's atomic writer does it: a new directory, a new link renamed over `..data`,
    // the old directory removed.
    let v2 = version(2, "240.0.0.62");
    symlink(v2.file_name().unwrap(), dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "cm.ns.global.",
        "240.0.0.62"
    )));
}

#[test]
fn periodic_rescan_catches_changes_without_events() {
    // The zones directory is created after start, so there is nothing to watch at first.
    let parent = tempfile::tempdir().unwrap();
    let zones = parent.path().join("later");
    let server = GlobalDns::start(&zones, &["--rescan-interval", "1"]);
    assert!(is_nxdomain(&server, "late.global."));
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(zones.join("late.yaml"), entry("late.global", "240.0.0.50")).unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "late.global.",
        "240.0.0.50"
    )));
}

/// A subdirectory that cannot be listed keeps what was last read below it; the rest of the
/// directory goes on. The server runs as `nobody`, since root lists a `chmod 000` directory.
#[test]
fn an_unreadable_subdirectory_keeps_its_last_known_names() {
    use std::os::unix::fs::PermissionsExt;
    let open = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let zones = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    open(zones.path(), 0o755);
    open(state.path(), 0o777);
    let sub = zones.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        zones.path().join("top.yaml"),
        entry("top.ns.global", "240.0.0.31"),
    )
    .unwrap();
    std::fs::write(
        sub.join("inner.yaml"),
        entry("inner.ns.global", "240.0.0.32"),
    )
    .unwrap();
    let state_file = state.path().join("state.json");
    let nobody = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
    ];
    let args = [
        "--rescan-interval",
        "1",
        "--state",
        state_file.to_str().unwrap(),
    ];
    let server = GlobalDns::start_wrapped(&nobody, zones.path(), &args);
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "inner.ns.global.",
        "240.0.0.32"
    )));

    open(&sub, 0o000);
    std::fs::write(
        zones.path().join("later.yaml"),
        entry("later.ns.global", "240.0.0.33"),
    )
    .unwrap();
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "later.ns.global.",
            "240.0.0.33"
        )),
        "{}",
        server.log_text()
    );
    assert!(
        resolves_to(&server, "inner.ns.global.", "240.0.0.32"),
        "kept: {}",
        server.log_text()
    );
    assert!(resolves_to(&server, "top.ns.global.", "240.0.0.31"));
    let log = server.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("cannot list directory"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(sub.to_str().unwrap()),
        "names the subdirectory: {line}"
    );
    // Logged once, not on every rescan.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.log_text().matches("cannot list directory").count(),
        1
    );

    open(&sub, 0o755);
    std::fs::write(
        sub.join("inner.yaml"),
        entry("inner.ns.global", "240.0.0.34"),
    )
    .unwrap();
    assert!(eventually(WITHIN, || resolves_to(
        &server,
        "inner.ns.global.",
        "240.0.0.34"
    )));
}

/// A FIFO, a device and an oversized file named `*.yaml` are skipped at once with a reason;
/// later changes keep being served.
#[test]
fn special_files_never_block_the_rescan() {
    let zones = zones_copy();
    let fifo = zones.path().join("fifo.yaml");
    mkfifo(&fifo);
    std::os::unix::fs::symlink("/dev/zero", zones.path().join("zero.yaml")).unwrap();
    let server = GlobalDns::start(zones.path(), &["--rescan-interval", "1"]);
    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
    std::fs::write(
        zones.path().join("later.yaml"),
        entry("later.ns.global", "240.0.0.35"),
    )
    .unwrap();
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "later.ns.global.",
            "240.0.0.35"
        )),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("fifo.yaml") && l.contains("not a regular file")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("zero.yaml") && l.contains("not a regular file"))
    );
}

/// A real network filesystem that can be made to hang: sshfs talking SFTP over pipes to a local
/// `sftp-server` (no network, no ssh). Stopping the server with SIGSTOP makes every uncached stat
/// or read under the mount block in the kernel, as on an NFS mount whose server went away.
/// Dropping it thaws the server and unmounts.
struct HungMount {
    server: std::process::Child,
    sshfs: std::process::Child,
    at: std::path::PathBuf,
}

impl HungMount {
    fn new(source: &std::path::Path, at: &std::path::Path) -> HungMount {
        use std::process::{Command, Stdio};
        let mut server = Command::new("/usr/lib/openssh/sftp-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sftp-server (openssh-sftp-server; tools/test.sh installs it)");
        let sshfs = Command::new("sshfs")
            .args([
                "-f",
                "-o",
                "passive,cache=no,attr_timeout=0,entry_timeout=0",
            ])
            .arg(format!(":{}", source.display()))
            .arg(at)
            .stdin(server.stdout.take().unwrap())
            .stdout(server.stdin.take().unwrap())
            .spawn()
            .expect("sshfs (tools/test.sh installs it; mounting FUSE needs root)");
        let mount = HungMount {
            server,
            sshfs,
            at: at.to_path_buf(),
        };
        let mounted = || {
            std::fs::read_to_string("/proc/self/mounts")
                .unwrap()
                .lines()
                .any(|l| l.contains(&format!(" {} fuse.sshfs ", at.display())))
        };
        assert!(eventually(WITHIN, mounted), "sshfs did not mount");
        mount
    }

    /// Stops the SFTP server until the guard is dropped. Declare the guard after the server
    /// under test: a process with a thread blocked on the hung mount cannot exit (not even on
    /// SIGKILL) until the mount answers, so the thaw must come first.
    fn freeze(&self) -> Frozen<'_> {
        signal(&self.server, "-STOP");
        Frozen(&self.server)
    }
}

struct Frozen<'a>(&'a std::process::Child);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(process: &std::process::Child, signal: &str) {
    let pid = process.id().to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for HungMount {
    fn drop(&mut self) {
        signal(&self.server, "-CONT");
        let _ = std::process::Command::new("fusermount")
            .arg("-u")
            .arg(&self.at)
            .status();
        let _ = self.sshfs.kill();
        let _ = self.server.kill();
        let _ = self.sshfs.wait();
        let _ = self.server.wait();
    }
}

#[test]
fn a_hung_mount_stalls_only_the_rescan_and_is_reported() {
    let zones = zones_copy();
    let at = tempfile::tempdir().unwrap();
    let mount = HungMount::new(zones.path(), at.path());
    let server = GlobalDns::start(at.path(), &["--rescan-interval", "1"]);
    assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));

    let frozen = mount.freeze();
    // The next rescan blocks in stat; names keep being answered meanwhile, and the log says why
    // changes stopped showing.
    std::fs::write(
        zones.path().join("later.yaml"),
        entry("later.ns.global", "240.0.0.36"),
    )
    .unwrap();
    let stuck = |server: &GlobalDns| server.log_text().contains("manifest scan is stuck");
    assert!(
        eventually(Duration::from_secs(20), || stuck(&server)),
        "{}",
        server.log_text()
    );
    for _ in 0..50 {
        assert!(resolves_to(&server, "reviews.default.global.", "240.0.0.3"));
    }
    assert!(is_nxdomain(&server, "later.ns.global."));

    // The mount comes back: the stuck scan finishes and the change shows.
    drop(frozen);
    assert!(
        eventually(WITHIN, || resolves_to(
            &server,
            "later.ns.global.",
            "240.0.0.36"
        )),
        "{}",
        server.log_text()
    );
    assert!(
        server
            .log_text()
            .contains("manifest scan finished after stalling")
    );
}
