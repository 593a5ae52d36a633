use std::process::ExitCode;

use globaldns::config::{ServerArgs, init_logging};
use globaldns::server::Server;
use tracing::{error, info};

fn main() -> ExitCode {
    let args = ServerArgs::parse_with_config_file();
    init_logging();
    // Set before any update thread starts; the server itself never needs it.
    globaldns::background::set_priority(args.update_priority);
    let config = args.into_config();
    keep_big_buffers_out_of_the_heap();
    raise_file_limit();
    start_rebuild_threads();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        // Machine-readable lines, so scripts and tests learn the ports when they were 0.
        if let Some(addr) = server.metrics_addr() {
            println!("metrics on {addr}");
        }
        for addr in server.tls_addrs() {
            println!("dns-over-tls on {addr}");
        }
        for addr in server.https_addrs() {
            println!("dns-over-https on {addr}");
        }
        for addr in server.local_addrs() {
            println!("listening on {addr}");
        }
        shutdown_signal().await;
        info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    });
    // Blocking work (a rescan reading a file on a hung mount, say) is not waited for: a stop
    // ends within this time whatever a thread is doing.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    code
}

const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// glibc raises its mmap threshold each time a big buffer is freed, so later manifest texts and
/// rebuild scratch land in the heap, where they stay resident (about 20 MiB at 100k names). A
/// fixed threshold keeps them in their own mappings, returned whole when freed.
fn keep_big_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Sockets (one per TCP client), upstream queries and manifest files all take file descriptors,
/// and systemd and container runtimes start us with a soft limit (often 1,024) far below the hard
/// one. Running out turns every forwarded name into SERVFAIL and stops the TCP listener, so the
/// soft limit goes to the hard limit at start, and the log says what it is.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if got != 0 {
        error!(error = %std::io::Error::last_os_error(), "cannot read the file descriptor limit");
        return;
    }
    let soft = limit.rlim_cur;
    if soft < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            let error = std::io::Error::last_os_error();
            error!(%error, soft, hard = limit.rlim_max, "cannot raise the file descriptor limit");
            return;
        }
    }
    info!(limit = limit.rlim_cur, was = soft, "file descriptors");
}

/// Parsing manifests and encoding the name table run on rayon's threads, niced: a big mesh's
/// rebuild uses idle cores but never outranks answering queries.
fn start_rebuild_threads() {
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("rebuild-{i}"))
        .start_handler(|_| globaldns::background::lower_this_thread())
        .build_global();
    if let Err(e) = pool {
        error!(error = %e, "cannot start the rebuild threads; using the default pool");
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
