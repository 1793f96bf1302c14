//! Answers handed to the gRPC runtime in one wake.
//!
//! The writer thread (a single site) and the statement writer (a site of a group) answer the
//! callers of a whole group of entries at once. Sent from those threads, each answer wakes its
//! caller's task through the runtime's queue for other threads, and the runtime polls each
//! woken task and then, at once, the connection's task that the answer woke in turn: one write
//! (`writev`) a response. Handed over as one list to a task of the runtime, the answers wake
//! their callers' tasks from inside it: on a current-thread runtime (`--io-threads 1`) those
//! all run before the connection's task, which then writes their responses together.

use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Delivers lists of answers on a task of a runtime, or on the calling thread when there is
/// none (a node started outside a runtime, in tests; or a runtime that has stopped).
pub(crate) struct Relay<T> {
    to_runtime: Option<mpsc::UnboundedSender<Vec<T>>>,
    deliver: fn(T),
}

impl<T: Send + 'static> Relay<T> {
    /// Starts the relaying task on `runtime`. The channel is unbounded: what it holds is
    /// answers to callers already admitted, which the queue's limit bounds.
    pub(crate) fn start(runtime: Option<&Handle>, deliver: fn(T)) -> Relay<T> {
        let to_runtime = runtime.map(|runtime| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<T>>();
            runtime.spawn(async move {
                while let Some(answers) = rx.recv().await {
                    answers.into_iter().for_each(deliver);
                }
            });
            tx
        });
        Relay { to_runtime, deliver }
    }

    pub(crate) fn send(&self, answers: Vec<T>) {
        if answers.is_empty() {
            return;
        }
        let answers = match &self.to_runtime {
            Some(tx) => match tx.send(answers) {
                Ok(()) => return,
                Err(mpsc::error::SendError(answers)) => answers,
            },
            None => answers,
        };
        answers.into_iter().for_each(self.deliver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    /// Answers reach their callers through the runtime's task, and without a runtime (or once
    /// it has stopped) on the sending thread: none is lost either way.
    #[test]
    fn answers_arrive_with_or_without_a_runtime() {
        let deliver: fn((oneshot::Sender<u32>, u32)) = |(tx, n)| {
            let _ = tx.send(n);
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let relay = Relay::start(Some(runtime.handle()), deliver);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..5).map(|_| oneshot::channel()).unzip();
        relay.send(senders.into_iter().zip(0..).collect());
        let got: Vec<u32> = runtime.block_on(async {
            let mut got = Vec::new();
            for rx in receivers {
                got.push(rx.await.expect("answered"));
            }
            got
        });
        assert_eq!(got, [0, 1, 2, 3, 4]);

        drop(runtime);
        let (tx, mut rx) = oneshot::channel();
        relay.send(vec![(tx, 7)]);
        assert_eq!(rx.try_recv(), Ok(7), "delivered on this thread once the runtime is gone");

        let direct = Relay::start(None, deliver);
        let (tx, mut rx) = oneshot::channel();
        direct.send(vec![(tx, 9)]);
        assert_eq!(rx.try_recv(), Ok(9));
    }
}
