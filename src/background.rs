//! Work that keeps the served data up to date (reading manifests, storing allocations, making
//! and freeing name tables) runs beside the queries, never ahead of them: on threads whose CPU
//! priority is lowered once, when they first take such work. On a busy two-core machine the
//! threads answering queries then win every contention, and the update just takes longer.

use std::cell::Cell;
use std::sync::OnceLock;

/// How far update work steps back for queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UpdatePriority {
    /// Nice 10: about a tenth of the CPU a query thread gets when both want it. A query thread
    /// that wakes may still wait for an update thread's time slice (a millisecond or two).
    #[default]
    Low,
    /// `SCHED_IDLE`: a query thread that wakes takes the CPU at once, which keeps the query
    /// latency tail off the updates. But update work then yields to every other thread of the
    /// same cgroup, not only ours: where the server shares its cgroup with busy programs (no
    /// pod or unit of its own), updates may wait on them for long.
    Idle,
}

/// The nice value of background threads at [`UpdatePriority::Low`] (the scheduler gives a
/// nice-0 thread about ten times the CPU of a nice-10 one when both want it).
const NICE: libc::c_int = 10;

static PRIORITY: OnceLock<UpdatePriority> = OnceLock::new();

/// Sets the priority of update threads; before any is started (later calls are ignored).
pub fn set_priority(priority: UpdatePriority) {
    let _ = PRIORITY.set(priority);
}

/// Lowers the calling thread's priority (once per thread; later calls do nothing).
pub fn lower_this_thread() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    if LOWERED.replace(true) {
        return;
    }
    // On Linux the nice value and the policy belong to the thread; 0 names the calling one. A
    // failure (a seccomp filter, say) leaves the thread as it was, or niced: slower queries
    // under load, nothing worse.
    if *PRIORITY.get_or_init(UpdatePriority::default) == UpdatePriority::Idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler only reads its arguments.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
    }
    // SAFETY: setpriority only reads its arguments.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}

/// [`tokio::task::spawn_blocking`], on a thread of lowered priority. Tokio's blocking threads
/// run only such work in this server, so a thread stays lowered for its life.
pub fn spawn_blocking<T, F>(work: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        lower_this_thread();
        work()
    })
}
