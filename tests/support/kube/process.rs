//! Child processes that never outlive the test that started them.
//!
//! Each program runs in a process group of its own and is killed (the whole group) when its
//! [`Proc`] is dropped, whether the test passed or panicked. Processes shared by the tests of one
//! binary live in statics, which are never dropped: for them the kernel is the safety net. Every
//! child asks for SIGKILL when its parent thread ends (`PR_SET_PDEATHSIG`), and all of them are
//! spawned by one keeper thread that lives as long as the test binary, so a shared process ends
//! with the binary and a test thread ending does not end a process it started.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The thread that spawns every child (see the module docs).
fn keeper() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static: this loop never ends, and the thread with it.
            })
            .unwrap();
        Mutex::new(tx)
    })
}

/// A running program, its output in `log`; the process group is killed on drop.
pub struct Proc {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        keeper().lock().unwrap().send((cmd, tx)).unwrap();
        let child = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }

    /// Kills the process group and waits for the process.
    pub fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.wait();
    }

    /// Kills the process group without waiting (for a process shared through a static).
    pub fn kill_group(&self) {
        // SAFETY: a plain kill(2) of our own child's group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
    }

    /// Ends it with SIGTERM (SIGKILL after `grace`), as an operator's restart would.
    pub fn stop(&mut self, grace: Duration) {
        // SAFETY: a plain kill(2) of our own child's group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
