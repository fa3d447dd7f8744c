//! What one client can take of the server: connections, time, and memory for request bodies.
//!
//! - **Connections.** [`serve_connections`] accepts a connection only while fewer than
//!   `max_connections` are open; past the cap, new ones wait in the kernel's listen backlog until a
//!   slot frees (nothing is refused, nothing is read).
//! - **Time.** A connection that does not send a complete request head within `idle_timeout`
//!   (hyper's header-read timeout: also between keep-alive requests) is closed, and a body that
//!   sends no byte for `idle_timeout` is answered `408` ([`read_chunk`]), so idle or trickling
//!   clients cannot hold the slots for ever. A request being answered is never timed out: the
//!   client is silent then on purpose.
//! - **Bodies in flight.** [`BodyBudget`] is the memory all buffered request bodies may take at
//!   once (`max_buffered_bytes`). A body is read only after its token is checked and only after
//!   its share is reserved — its declared length, or the whole request limit when it declares
//!   none; when the budget is spent the request is answered `503 unavailable` at once rather than
//!   queued, so no reader holds memory while it waits. Uploads stream to disk and do not count.
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use futures_util::StreamExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How many connections may be open, and how long a client may stay silent while sending.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Requires `> 0` (checked by the configuration).
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` until `shutdown` turns `true`; then stops accepting
/// and waits for the open connections to finish their requests.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    loop {
        // Take the slot first: over the cap the connection stays in the backlog, unaccepted.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the slots semaphore is never closed"),
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait, try again.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop::<OwnedSemaphorePermit>(slot);
        });
    }
    graceful.shutdown().await;
}

/// The next chunk of a body, or a `408`-worthy [`BodyStalled`] when none comes within `idle`.
pub(crate) async fn read_chunk<S, E>(
    stream: &mut S,
    idle: Duration,
) -> Result<Option<Result<Bytes, E>>, BodyStalled>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
{
    tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| BodyStalled(idle))
}

/// A body that sent nothing for the idle timeout.
#[derive(Debug)]
pub(crate) struct BodyStalled(pub Duration);

/// The memory all buffered request bodies may take at once, counted in KiB.
pub(crate) struct BodyBudget {
    kib: Arc<Semaphore>,
    total_bytes: usize,
}

/// A body's share of the [`BodyBudget`], given back when dropped.
pub(crate) struct BodyShare(#[allow(dead_code)] OwnedSemaphorePermit);

impl BodyBudget {
    /// Requires `total_bytes` to be at least the largest single request body, so that any
    /// acceptable body fits when nothing else is in flight (checked by the configuration).
    pub(crate) fn new(total_bytes: usize) -> BodyBudget {
        let kib = kib(total_bytes).min(Semaphore::MAX_PERMITS as u64) as usize;
        BodyBudget {
            kib: Arc::new(Semaphore::new(kib)),
            total_bytes,
        }
    }

    /// Reserves room for a body of at most `bytes`, or `None` when the budget is spent.
    pub(crate) fn reserve(&self, bytes: usize) -> Option<BodyShare> {
        let kib = u32::try_from(kib(bytes)).ok()?;
        self.kib
            .clone()
            .try_acquire_many_owned(kib)
            .ok()
            .map(BodyShare)
    }

    /// The budget, in bytes (for error messages).
    pub(crate) fn total_bytes(&self) -> usize {
        self.total_bytes
    }
}

/// `bytes` in KiB, rounded up; at least one, so every body holds a share.
fn kib(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(1024).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_body_budget_refuses_until_a_share_is_returned() {
        let budget = BodyBudget::new(10 * 1024);
        let first = budget.reserve(6 * 1024).expect("fits");
        assert!(budget.reserve(5 * 1024).is_none(), "6 + 5 KiB > 10 KiB");
        let second = budget.reserve(4 * 1024).expect("6 + 4 KiB fits exactly");
        assert!(budget.reserve(1).is_none(), "even one byte takes a KiB");
        drop(first);
        assert!(budget.reserve(5 * 1024).is_some());
        drop(second);
    }
}
