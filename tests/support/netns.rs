//! Running a shell script in private mount, network and PID namespaces (`unshare`), where
//! programs may take port 53 on loopback: the only interface there, so nothing leaves.
//!
//! The script reports through its stdout in sections: `== NAME`, the lines of output, and
//! `rc=N`. Killing the namespace's first process (the script) kills everything it started.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Shell functions for scripts: `lo_up` brings up loopback (with the documentation addresses
/// 192.0.2.10 and 2001:db8::10 beside it, so getaddrinfo's AI_ADDRCONFIG asks for A and AAAA),
/// `start_globaldns BIN DIR [FLAGS...]` starts globaldns on 127.0.0.1:53 with the zones in
/// DIR/zones and waits until it answers, `section NAME CMD...` runs a command as a section.
pub const PRELUDE: &str = r#"
pids=
trap '[ -z "$pids" ] || kill $pids 2>/dev/null' EXIT
lo_up() {
    if command -v ip >/dev/null 2>&1; then
        ip link set lo up && ip addr add 192.0.2.10/32 dev lo || return 1
        ip addr add 2001:db8::10/128 dev lo 2>/dev/null
        return 0
    fi
    # No iproute2: SIOCGIFFLAGS, SIOCSIFFLAGS (IFF_UP) and SIOCSIFADDR through perl-base.
    perl -e 'socket(my $s, 2, 2, 0) or die "socket: $!";
        my $r = pack("a16 x24", "lo"); ioctl($s, 0x8913, $r) or die "get flags: $!";
        $r = pack("a16 s x22", "lo", unpack("x16 s", $r) | 1);
        ioctl($s, 0x8914, $r) or die "set flags: $!";
        $r = pack("a16 S n C4 x16", "lo:vm", 2, 0, 192, 0, 2, 10);
        ioctl($s, 0x8916, $r) or die "set address: $!";
        socket(my $s6, 10, 2, 0) or exit 0;
        $r = pack("n8 L l", 0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10, 128, 1);
        ioctl($s6, 0x8916, $r)'
}
start_globaldns() {
    bin=$1 dir=$2
    shift 2
    "$bin" --listen 127.0.0.1:53 --zones "$dir/zones" --state "$dir/state.json" \
        --resolv-conf /dev/null --workers 2 "$@" >"$dir/globaldns.out" 2>"$dir/globaldns.log" &
    pids="$pids $!"
    i=0
    until grep -q '^listening on ' "$dir/globaldns.out"; do
        i=$((i + 1))
        [ "$i" -lt 300 ] || { echo "globaldns did not start"; return 1; }
        sleep 0.05
    done
}
section() {
    echo "== $1"
    shift
    "$@"
    echo "rc=$?"
}
"#;

/// What a script run in the namespaces left behind.
pub struct Isolated {
    pub status: ExitStatus,
    /// Section name → (output lines, exit code).
    pub sections: HashMap<String, (Vec<String>, String)>,
    /// The script's stdout and stderr and every `*.log` in its directory, for failure messages.
    pub context: String,
}

impl Isolated {
    /// The output and exit code of section `name`; fails with the context when it did not run.
    pub fn section(&self, name: &str) -> (Vec<String>, String) {
        self.sections
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("`{name}` not run\n{}", self.context))
    }
}

/// Runs `script` (after [`PRELUDE`]) with `sh` in new mount, network and PID namespaces (and a
/// user namespace when not root), with `args` as `$1...`; killed after `timeout`.
pub fn run_isolated(dir: &Path, script: &str, args: &[&OsStr], timeout: Duration) -> Isolated {
    let path = dir.join("isolated.sh");
    std::fs::write(&path, format!("{PRELUDE}\n{script}")).unwrap();
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    let out_path = dir.join("isolated.out");
    let err_path = dir.join("isolated.err");
    cmd.args(["--mount", "--net", "--pid", "--fork", "--kill-child"])
        .arg("sh")
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("unshare (Debian package util-linux)");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            eprintln!("timed out: killing unshare and with it the namespaces' processes");
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let out = read(&out_path);
    let mut context = format!(
        "{status}\n--- stdout:\n{out}\n--- stderr:\n{}",
        read(&err_path)
    );
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for log in logs {
        context += &format!("\n--- {}:\n{}", log.display(), read(&log));
    }

    let mut sections: HashMap<String, (Vec<String>, String)> = HashMap::new();
    let mut current = None;
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = Some(name.to_string());
            sections.insert(name.to_string(), Default::default());
        } else if let Some(name) = &current {
            let section = sections.get_mut(name).unwrap();
            match line.strip_prefix("rc=") {
                Some(rc) => section.1 = rc.to_string(),
                None => section.0.push(line.to_string()),
            }
        }
    }
    Isolated {
        status,
        sections,
        context,
    }
}
