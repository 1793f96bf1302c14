//! `hazinad`: runs a Hazina ledger node. `hazinad --help` lists every setting.

use clap::Parser;

/// jemalloc serves every allocation of the process, RocksDB's too: under one transfer per
/// request it carried 4% to 7% more transfers a second than with glibc's malloc (docs/adr/0008).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = hazinad::server::Args::parse();
    hazinad::server::init_tracing(&args);
    // One thread: a current-thread runtime, where a connection's task runs after the callers'
    // tasks that woke it and writes their responses together (crate::relay).
    let mut builder = if args.io_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(args.io_threads);
        builder
    };
    let runtime = match builder.thread_name("hazina-io").enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hazinad: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hazinad::server::run(args, hazinad::server::shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "hazinad stopped");
            eprintln!("hazinad: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
