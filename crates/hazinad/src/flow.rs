//! Flow control: the node slows its own admission of writes when RocksDB's flushes and
//! compactions fall far behind, instead of letting RocksDB stop its writes.
//!
//! RocksDB protects itself from compaction debt by delaying every write of the database, at a
//! rate it lowers while the debt grows (down to 16 KB/s). The node's writer then sits in one
//! write for seconds and no caller gets an answer: under a sustained batched load on 10M
//! accounts, 5.6 s without any (docs/BENCHMARKS.md). Instead, a sampler reads RocksDB's
//! counters every [`SAMPLE_EVERY`] ([`hazina_store::WritePressure`]): through RocksDB's own
//! gentle slowdown writes are admitted freely; as RocksDB nears a stop, or its delayed rate
//! falls, they are admitted at a rate that falls from the rate the node was carrying to
//! nothing, as a token bucket; near the stop none are. A refused request gets
//! `RESOURCE_EXHAUSTED` at once and changed nothing, with a `google.rpc.RetryInfo` saying when
//! to come back; reads are never refused. See docs/adr/0006-flow-control.md.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use hazina_store::Store;
use parking_lot::Mutex;

use crate::node::NodeError;

/// How often the sampler reads RocksDB's counters.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The window over which the committed rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// The lowest rate the controller starts from, in commands a second: a node throttled after an
/// idle spell still admits something.
const BASE_RATE_MIN: f64 = 1_000.0;
/// Tokens the bucket holds at most, in seconds of its rate: a short burst passes.
const BURST: f64 = 0.1;
/// The wait a refused caller is told while no writes are admitted: the sampler looks again
/// every [`SAMPLE_EVERY`], and a compaction that fell behind takes longer than that to catch up.
pub const CLOSED_RETRY_AFTER: Duration = Duration::from_millis(250);
/// The longest wait a refused caller is told.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(1);

/// What the controller decided, for the admission check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Control {
    /// Every write is admitted (up to the queue's bound).
    Open,
    /// Writes are admitted at about this many commands a second.
    Rate(f64),
    /// No write is admitted until storage catches up.
    Closed,
}

/// Turns samples of the pressure into admission rates. Pure: the caller gives the time.
#[derive(Debug)]
pub struct Controller {
    /// (time, commands committed so far), the last [`RATE_WINDOW`] of samples.
    samples: VecDeque<(Instant, u64)>,
    /// The rate the node carried when the throttle began: the rate it falls from.
    base: Option<f64>,
}

impl Default for Controller {
    fn default() -> Controller {
        Controller::new()
    }
}

impl Controller {
    pub fn new() -> Controller {
        Controller { samples: VecDeque::new(), base: None }
    }

    /// The committed rate over the window, in commands a second (0 before two samples).
    fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                c1.saturating_sub(c0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// One sample: the time, the commands committed so far and the pressure level
    /// ([`hazina_store::WritePressure::level`]: 0 or less is no pressure, 1 is RocksDB's own
    /// slowdown).
    pub fn sample(&mut self, now: Instant, committed: u64, level: f64) -> Control {
        self.samples.push_back((now, committed));
        while let Some(&(t, _)) = self.samples.front() {
            if now.duration_since(t) <= RATE_WINDOW {
                break;
            }
            self.samples.pop_front();
        }
        if level <= 0.0 {
            self.base = None;
            return Control::Open;
        }
        // The rate when the throttle began, kept until it ends: what the node carries while
        // throttled is the throttle's own doing, and starting from it would only fall.
        let rate = self.rate();
        let base = *self.base.get_or_insert(rate.max(BASE_RATE_MIN));
        if level >= 1.0 { Control::Closed } else { Control::Rate(base * (1.0 - level)) }
    }
}

/// The admission check every write passes, set by the sampler.
#[derive(Debug)]
pub struct Admission {
    /// Fast path: nothing to check while storage keeps up.
    limited: AtomicBool,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    control: Control,
    /// May fall below zero: a request is admitted while any token is left, whatever its size,
    /// so that a batch larger than the bucket still passes, and the next ones wait for it.
    tokens: f64,
    at: Instant,
    /// When the tokens promised to callers already told to come back will have been earned:
    /// each refused caller is told a later time than the one before, by its request's share
    /// of the rate, so that they do not all come back at once and refuse each other again.
    booked_until: Instant,
    /// What the storage is behind on, for the refusal.
    why: String,
}

impl Default for Admission {
    fn default() -> Admission {
        Admission::new()
    }
}

impl Admission {
    pub fn new() -> Admission {
        let now = Instant::now();
        let bucket = Bucket {
            control: Control::Open,
            tokens: 0.0,
            at: now,
            booked_until: now,
            why: String::new(),
        };
        Admission { limited: AtomicBool::new(false), bucket: Mutex::new(bucket) }
    }

    /// Admits a write of `n` commands, or says why not.
    pub fn admit(&self, n: usize) -> Result<(), NodeError> {
        self.admit_at(Instant::now(), n)
    }

    fn admit_at(&self, now: Instant, n: usize) -> Result<(), NodeError> {
        if !self.limited.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut bucket = self.bucket.lock();
        let rate = match bucket.control {
            Control::Open => return Ok(()),
            Control::Closed => 0.0,
            Control::Rate(rate) => rate,
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min((rate * BURST).max(1.0));
        bucket.at = now;
        if rate > 0.0 && bucket.tokens > 0.0 {
            bucket.tokens -= n as f64;
            return Ok(());
        }
        metrics::counter!("hazina_requests_rejected_total", "reason" => "storage_behind")
            .increment(1);
        let retry_after = if rate > 0.0 {
            // When the bucket will hold a token again (its deficit and one more, at its
            // rate), or, if callers refused before were told that time or later, once their
            // requests are paid for too. In seconds from now, booked at most a minute ahead
            // however low the rate.
            let booked = bucket.booked_until.saturating_duration_since(now).as_secs_f64();
            let wait = ((1.0 - bucket.tokens) / rate).max(booked).min(60.0);
            bucket.booked_until = now + Duration::from_secs_f64((wait + n as f64 / rate).min(60.0));
            Duration::from_secs_f64(wait).min(RETRY_AFTER_MAX)
        } else {
            CLOSED_RETRY_AFTER
        };
        #[allow(clippy::cast_possible_truncation)] // A rate: finite, at least 0, below 2^53.
        let rate = rate.round() as u64;
        Err(NodeError::StorageBehind { rate, why: bucket.why.clone(), retry_after })
    }

    /// Sets what the controller decided, and why (shown to refused callers).
    pub fn set(&self, control: Control, why: impl FnOnce() -> String) {
        self.set_at(Instant::now(), control, why);
    }

    fn set_at(&self, now: Instant, control: Control, why: impl FnOnce() -> String) {
        let mut bucket = self.bucket.lock();
        if bucket.control == Control::Open && control != Control::Open {
            // A throttle starts with a full bucket.
            bucket.at = now;
            bucket.tokens = match control {
                Control::Rate(rate) => (rate * BURST).max(1.0),
                _ => 0.0,
            };
        } else if let (Control::Rate(old), Control::Rate(_)) = (bucket.control, control) {
            // Tokens earned at the old rate until now.
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * old).min((old * BURST).max(1.0));
            bucket.at = now;
        }
        if control != Control::Open {
            bucket.why = why();
        }
        bucket.control = control;
        self.limited.store(control != Control::Open, Ordering::Relaxed);
    }
}

/// Starts the `hazina-flow` thread: [`sample`] until `writer`'s sender is dropped.
pub(crate) fn start(
    store: Arc<Store>,
    committed: impl Fn() -> u64 + Send + 'static,
    admission: Arc<Admission>,
    writer: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hazina-flow".into())
        .spawn(move || sample(&store, committed, &admission, &writer))
}

/// Reads RocksDB's pressure every [`SAMPLE_EVERY`] and sets the admission of writes by
/// it, until `writer`'s sender is dropped (the
/// writer stopped). `committed` counts the commands made durable so far.
pub(crate) fn sample(
    store: &Store,
    committed: impl Fn() -> u64,
    admission: &Admission,
    writer: &Receiver<()>,
) {
    let mut controller = Controller::new();
    let mut was = Control::Open;
    while let Err(RecvTimeoutError::Timeout) = writer.recv_timeout(SAMPLE_EVERY) {
        let pressure = match store.write_pressure() {
            Ok(pressure) => pressure,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read RocksDB's counters; admitting writes");
                admission.set(Control::Open, String::new);
                continue;
            }
        };
        let level = pressure.level();
        let control = controller.sample(Instant::now(), committed(), level);
        admission.set(control, || pressure.to_string());
        metrics::gauge!("hazina_storage_pressure").set(level.max(0.0));
        metrics::gauge!("hazina_admission_rate").set(match control {
            Control::Open => -1.0,
            Control::Rate(rate) => rate,
            Control::Closed => 0.0,
        });
        match (was, control) {
            (Control::Open, Control::Rate(rate)) => {
                tracing::warn!(%pressure, rate = rate.round(), "storage is behind: throttling writes");
            }
            (Control::Open | Control::Rate(_), Control::Closed) => {
                tracing::warn!(%pressure, "storage is behind: refusing writes until it catches up");
            }
            (Control::Rate(_) | Control::Closed, Control::Open) => {
                tracing::info!(%pressure, "storage caught up: admitting writes freely");
            }
            _ => {}
        }
        was = control;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_controller_throttles_from_the_rate_carried_and_closes_at_level_one() {
        let start = Instant::now();
        let mut controller = Controller::new();
        // 200,000 commands a second for a second, storage keeping up.
        for i in 0..=20u64 {
            let control = controller.sample(start + ms(50 * i), 10_000 * i, -0.5);
            assert_eq!(control, Control::Open);
        }
        // Compactions fall behind: a quarter of the way to where writes are refused.
        let t = start + ms(1_050);
        match controller.sample(t, 210_000, 0.25) {
            Control::Rate(rate) => assert!((rate - 150_000.0).abs() < 1.0, "{rate}"),
            other => panic!("{other:?}"),
        }
        // While throttled the node carries less; the rate still falls from the first base.
        match controller.sample(t + ms(50), 212_000, 0.5) {
            Control::Rate(rate) => assert!((rate - 100_000.0).abs() < 1.0, "{rate}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(controller.sample(t + ms(100), 213_000, 1.0), Control::Closed);
        assert_eq!(controller.sample(t + ms(150), 213_000, 3.0), Control::Closed);
        assert_eq!(controller.sample(t + ms(200), 213_000, 0.0), Control::Open);
        // A new throttle starts from the rate carried over the last second: from 300 ms
        // (60,000 committed) to 1,300 ms (213,000).
        match controller.sample(t + ms(250), 213_000, 0.5) {
            Control::Rate(rate) => assert!((rate - 76_500.0).abs() < 1.0, "{rate}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_idle_node_that_is_behind_still_admits_at_the_floor() {
        let start = Instant::now();
        let mut controller = Controller::new();
        match controller.sample(start, 0, 0.5) {
            Control::Rate(rate) => assert!((rate - BASE_RATE_MIN * 0.5).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_bucket_admits_at_its_rate_and_refuses_with_the_reason() {
        let admission = Admission::new();
        let start = Instant::now();
        assert_eq!(admission.admit_at(start, 8_000), Ok(()), "open admits anything");
        // 10,000 commands a second: a burst of 1,000, then 10 a millisecond.
        admission.set_at(start, Control::Rate(10_000.0), || "history is behind".into());
        assert_eq!(admission.admit_at(start, 600), Ok(()));
        assert_eq!(admission.admit_at(start, 600), Ok(()), "a token left admits any size");
        match admission.admit_at(start, 1) {
            Err(NodeError::StorageBehind { rate, why, retry_after }) => {
                assert_eq!((rate, why.as_str()), (10_000, "history is behind"));
                // 200 tokens short, and one more: 20.1 ms at 10 a millisecond.
                assert_eq!(retry_after, Duration::from_micros(20_100));
            }
            other => panic!("{other:?}"),
        }
        // Another caller refused at once is told to come back once the first one's token is
        // earned too: 0.1 ms later.
        match admission.admit_at(start, 1) {
            Err(NodeError::StorageBehind { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_micros(20_200));
            }
            other => panic!("{other:?}"),
        }
        // 200 tokens short: 20 ms to earn them back, then one more.
        assert!(admission.admit_at(start + ms(19), 1).is_err());
        assert_eq!(admission.admit_at(start + ms(21), 1), Ok(()));
        // A large batch passes once a token is there, and holds the next ones back.
        assert_eq!(admission.admit_at(start + ms(30), 8_000), Ok(()));
        match admission.admit_at(start + ms(100), 1) {
            // 7,201 tokens short (99 left at 30 ms, less 8,000, plus 700 earned since):
            // told to come back when they and one more are earned, 720.2 ms later.
            Err(NodeError::StorageBehind { retry_after, .. }) => {
                let expected = Duration::from_micros(720_200);
                assert!(
                    retry_after.abs_diff(expected) < Duration::from_micros(10),
                    "{retry_after:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(admission.admit_at(start + ms(30 + 801), 1), Ok(()));
        // However deep the deficit, the wait told is at most a second.
        admission.set_at(start + ms(840), Control::Rate(10.0), || "slow".into());
        assert_eq!(admission.admit_at(start + ms(841), 8_000), Ok(()));
        match admission.admit_at(start + ms(842), 1) {
            Err(NodeError::StorageBehind { retry_after, .. }) => {
                assert_eq!(retry_after, RETRY_AFTER_MAX);
            }
            other => panic!("{other:?}"),
        }
        admission.set_at(start + ms(900), Control::Closed, || "stopped".into());
        let refused = admission.admit_at(start + ms(5_000), 1).expect_err("closed");
        let why = "stopped".into();
        assert_eq!(
            refused,
            NodeError::StorageBehind { rate: 0, why, retry_after: CLOSED_RETRY_AFTER }
        );
        admission.set_at(start + ms(5_000), Control::Open, || unreachable!("not asked"));
        assert_eq!(admission.admit_at(start + ms(5_000), 8_000), Ok(()));
    }
}
