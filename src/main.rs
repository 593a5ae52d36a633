use std::process::ExitCode;

use globaldns::config::{ServerArgs, init_logging};
use globaldns::server::Server;
use tracing::{error, info};

fn main() -> ExitCode {
    let args = ServerArgs::parse_with_config_file();
    init_logging();
    let config = args.into_config();
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
    runtime.block_on(async {
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
        println!("listening on {}", server.local_addr());
        shutdown_signal().await;
        info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
