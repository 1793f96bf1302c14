//! `hazina-loadtest`: see the library documentation, or `hazina-loadtest --help`.

use clap::Parser;

/// jemalloc, as in `hazinad`: in run A (one transfer per request) the load generator spent 0.6
/// to 1.2 µs less CPU a request with it than with glibc's malloc (docs/adr/0008).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let args = hazina_loadtest::Args::parse();
    let threads = args.threads.unwrap_or(if args.rate == 0 { 1 } else { 0 });
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            builder.worker_threads(threads);
        }
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hazina-loadtest: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hazina_loadtest::run(args)) {
        Ok(report) if report.verification.passed => std::process::ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("hazina-loadtest: verification FAILED");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hazina-loadtest: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
