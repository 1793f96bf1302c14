//! The load generator against a three-site group (in-process sites) while the primary site is
//! lost: its callers follow the new primary, the run's verification passes (money conserved,
//! every acknowledged transfer looked up on the new primary with its outcome), and the report
//! names the longest stretch without an answer, the write pause of the failover.

use std::time::Duration;

use clap::Parser;
use hazina_client::{Client, RetryPolicy};
use hazina_loadtest::{Args, run};
use hazina_testkit::free_ports;

/// The site every running site names as primary, once they agree.
async fn primary(api: &[String], running: &[bool]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        for (i, addr) in api.iter().enumerate().filter(|(i, _)| running[*i]) {
            let retry = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
            if let Ok(client) = Client::connect_with(addr, retry).await
                && let Ok(status) = client.status().await
            {
                leaders.push((i, status.leader_site));
            }
        }
        let count = running.iter().filter(|&&r| r).count();
        if leaders.len() == count
            && leaders[0].1 != 0
            && leaders.iter().all(|&(_, l)| l == leaders[0].1)
        {
            return usize::try_from(leaders[0].1 - 1).expect("a small site id");
        }
        assert!(std::time::Instant::now() < deadline, "no primary: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_through_the_loss_of_the_primary_is_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(6);
    let api: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
    let sites: Vec<String> =
        (0..3).map(|i| format!("{}={},127.0.0.1:{}", i + 1, api[i], ports[3 + i])).collect();
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    for i in 0..3 {
        let ready = dir.path().join(format!("site{}.ready", i + 1));
        let data = dir.path().join(format!("site{}", i + 1));
        let mut argv = vec![
            "hazinad".to_owned(),
            "--data-dir".into(),
            data.to_str().expect("utf-8 path").into(),
            "--metrics-listen".into(),
            "off".into(),
            "--ready-file".into(),
            ready.to_str().expect("utf-8 path").into(),
            "--site-id".into(),
            (i + 1).to_string(),
        ];
        for site in &sites {
            argv.push("--site".into());
            argv.push(site.clone());
        }
        let args = hazinad::server::Args::parse_from(argv);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(Some(stop));
        servers.push(tokio::spawn(async move {
            hazinad::server::run(args, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string())
        }));
        while !ready.exists() {
            assert!(!servers[i].is_finished(), "site {} stopped before serving", i + 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut running = [true; 3];
    primary(&api, &running).await;

    let argv = [
        "hazina-loadtest",
        "--target",
        &api.join(","),
        "--metrics",
        "off",
        "--attempts",
        "10",
        "--customers",
        "2000",
        "--tills",
        "50",
        "--paybills",
        "20",
        "--agents",
        "20",
        "--employers",
        "2",
        "--salary-batch",
        "20",
        "--rate",
        "600",
        "--duration",
        "4",
        "--seed",
        "11",
    ];
    let args = Args::parse_from(argv);
    let load = tokio::spawn(async move { run(args).await.map_err(|e| e.to_string()) });
    // Set-up takes a moment; lose the primary about halfway through the load.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let lost = primary(&api, &running).await;
    stops[lost].take().expect("running").send(()).expect("the site is running");
    running[lost] = false;
    let report = load.await.expect("joined").expect("the run");
    let new = primary(&api, &running).await;
    assert_ne!(new, lost);
    assert!(report.verification.passed, "{:?}", report.verification);
    assert!(report.transfers > 1_000, "{report:?}");
    assert!(report.longest_answer_gap_ms > 0.0, "{report:?}");
    assert!(report.longest_answer_gap_end_s <= report.seconds + 0.5, "{report:?}");
    eprintln!(
        "site {} lost: longest gap {:.0} ms ending {:.1} s into the load, {} transfers, {} errors",
        lost + 1,
        report.longest_answer_gap_ms,
        report.longest_answer_gap_end_s,
        report.transfers,
        report.transport_errors
    );
    for stop in stops.into_iter().flatten() {
        let _ = stop.send(());
    }
    for server in servers {
        server.await.expect("joined").expect("the site stopped cleanly");
    }
}
