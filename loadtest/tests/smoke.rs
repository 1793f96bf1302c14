//! The load generator against an in-process node: a short open-loop run and a short batched
//! closed-loop run, each verified (money conserved, every acknowledged transfer looked up, every
//! resend answered with its first outcome, the node's counters equal to ours), the first also
//! drawn with `--plot`.

use std::time::Duration;

use clap::Parser;
use hazina_loadtest::{Args, run};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_is_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ready = dir.path().join("ready");
    let metrics = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let server_args = hazinad::server::Args::parse_from([
        "hazinad",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &metrics,
        "--ready-file",
        ready.to_str().expect("utf-8 path"),
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        hazinad::server::run(server_args, async {
            let _ = stopped.await;
        })
        .await
        .map_err(|e| e.to_string())
    });
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&ready) {
            break addr;
        }
        assert!(!server.is_finished(), "the node stopped before serving");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let base = |extra: &[&str]| {
        let mut argv = vec![
            "hazina-loadtest".to_owned(),
            "--target".into(),
            format!("http://{addr}"),
            "--metrics".into(),
            format!("http://{metrics}/metrics"),
            "--customers".into(),
            "2000".into(),
            "--tills".into(),
            "50".into(),
            "--paybills".into(),
            "20".into(),
            "--agents".into(),
            "20".into(),
            "--employers".into(),
            "2".into(),
            "--duration".into(),
            "3".into(),
            "--resend-percent".into(),
            "5".into(),
            "--salary-batch".into(),
            "20".into(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        Args::parse_from(argv)
    };

    let chart = dir.path().join("open.svg");
    let chart_arg = chart.to_str().expect("utf-8 path");
    let open = run(base(&["--rate", "1500", "--seed", "7", "--plot", chart_arg]))
        .await
        .expect("open-loop run");
    assert!(open.transfers > 2_000, "{open:?}");
    // One sample a second, the last at the end of the run; together they count every transfer.
    assert!(open.timeline.len() >= 3, "{:?}", open.timeline);
    let last = open.timeline.last().expect("samples");
    assert!((last.at_seconds - open.seconds).abs() < 0.5, "{last:?} vs {} s", open.seconds);
    let mut at = 0.0;
    let mut counted = 0.0;
    for s in &open.timeline {
        counted += s.transfers_per_second * (s.at_seconds - at);
        at = s.at_seconds;
    }
    assert!((counted - open.transfers as f64).abs() < 1.0, "{counted} vs {}", open.transfers);
    let svg = std::fs::read_to_string(&chart).expect("--plot wrote the chart");
    assert!(svg.starts_with("<svg") && svg.contains("open loop, target 1500 transfers/s"));
    assert!(open.verification.metrics_checked, "{open:?}");
    assert!(open.verification.passed, "{:?}", open.verification);
    let refused = open.results.get("InsufficientFunds").copied().unwrap_or(0);
    assert!(refused > open.transfers / 10, "too few refusals: {:?}", open.results);

    let closed = run(base(&[
        "--rate",
        "0",
        "--batch",
        "50",
        "--concurrency",
        "8",
        "--skip-setup",
        "--seed",
        "8",
    ]))
    .await
    .expect("closed-loop run");
    assert!(closed.transfers > open.transfers / 2, "{closed:?}");
    assert!(closed.verification.passed, "{:?}", closed.verification);

    stop.send(()).expect("the node is running");
    server.await.expect("joined").expect("the node stopped cleanly");
}
