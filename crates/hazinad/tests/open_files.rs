//! A node started with a low limit of open files raises it to the hard limit (RocksDB keeps
//! its table files open and every connection is a file), and reports its process figures on
//! its Prometheus endpoint.

#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{Server, free_ports, metric, scrape};

/// The soft limit of open files of process `pid`, from `/proc`.
fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a line");
    line.split_whitespace().nth(3).expect("the soft limit").parse().expect("a number")
}

#[tokio::test]
async fn a_node_raises_its_open_files_limit_and_reports_its_process_figures() {
    let (soft, hard) = rlimit::Resource::NOFILE.get().expect("read the limit");
    // What hazinad asks for: the hard limit, 2^20 at most.
    let wanted = hard.min(1 << 20);
    // The child inherits a soft limit under that.
    let lowered = (wanted / 2).min(soft);
    assert!(lowered < wanted, "the hard limit ({hard}) leaves nothing to raise");
    let dir = tempfile::tempdir().expect("temporary folder");
    let metrics = format!("127.0.0.1:{}", free_ports(1)[0]);
    rlimit::Resource::NOFILE.set(lowered, hard).expect("lower the limit");
    let server = Server::start(&dir.path().join("data"), &["--metrics-listen", &metrics]);
    rlimit::Resource::NOFILE.set(soft, hard).expect("restore the limit");

    let pid = server.pid().expect("running");
    assert_eq!(open_files_limit(pid), wanted, "started with {lowered}");
    let bound = hazina_testkit::rocksdb_option(&dir.path().join("data"), "max_open_files");
    assert_eq!(bound, Some((wanted / 2).to_string()), "half for table files");
    // The process figures are read once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(&metrics).await;
        if metric(&body, "process_open_fds").is_some() || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(metric(&body, "process_max_fds"), Some(wanted as f64));
    let open = metric(&body, "process_open_fds").expect("process_open_fds");
    // RocksDB's files, the listeners, the log: some, and far under the limit.
    assert!(open > 5.0 && open < wanted as f64, "{open} files open");
    assert!(metric(&body, "process_resident_memory_bytes").is_some_and(|bytes| bytes > 0.0));
}
