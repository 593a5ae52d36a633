//! Work that keeps the served data up to date (reading manifests, storing allocations, making
//! and freeing name tables) runs beside the queries, never ahead of them: on threads whose CPU
//! priority is lowered once, when they first take such work. On a busy two-core machine the
//! threads answering queries then win every contention, and the update just takes longer.

use std::cell::Cell;

/// The nice value of background threads (the scheduler gives a nice-0 thread about ten times
/// the CPU of a nice-10 one when both want it).
const NICE: libc::c_int = 10;

/// Lowers the calling thread's priority (once per thread; later calls do nothing).
pub fn lower_this_thread() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    if LOWERED.replace(true) {
        return;
    }
    // On Linux the nice value belongs to the thread; 0 names the calling one. A failure (a
    // seccomp filter, say) leaves the thread as it was: slower queries under load, nothing worse.
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
