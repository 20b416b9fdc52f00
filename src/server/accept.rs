//! The accept loop, the connection bound and graceful shutdown.
//!
//! Shape (after tokio's mini-redis): the listener accepts, takes a permit
//! from a semaphore that bounds simultaneous connections, and spawns one task
//! per connection, tracked by a [`TaskTracker`]. Shutdown cancels a
//! [`CancellationToken`] every connection task watches, closes the tracker
//! and waits for its tasks to finish (the drain).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::server::connection::{self, ConnectionConfig};
use crate::server::end::{log_end, log_held_back};
use crate::server::peer::Peer;
use crate::server::pool::Pool;
use crate::server::ratelimit::RateLimited;

/// Settings for [`serve_until_shutdown`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Most connections served at once (D18); further clients are accepted
    /// and closed immediately, so they fail fast instead of hanging.
    pub max_connections: usize,
    /// Most connections served at once for one peer process (by its
    /// SO_PEERCRED pid), so that one client cannot take every slot; 0 = no
    /// limit. Further connections from that process are accepted and closed
    /// immediately, like those over `max_connections`.
    pub max_connections_per_client: usize,
    /// Per-connection settings.
    pub connection: ConnectionConfig,
    /// The worker threads that execute requests; their bound is the most
    /// SG_IO commands executing at once (`sgio_threads`).
    pub pool: Pool,
    /// Who may connect.
    pub policy: AccessPolicy,
}

/// Peers allowed to connect, by SO_PEERCRED. Empty lists allow everyone
/// the socket's permissions let in (as qemu-pr-helper); otherwise a peer
/// must match both non-empty lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Allowed uids.
    pub uids: Vec<u32>,
    /// Allowed (primary) gids.
    pub gids: Vec<u32>,
}

impl AccessPolicy {
    /// True if `peer` may use the helper.
    pub fn allows(&self, peer: &Peer) -> bool {
        (self.uids.is_empty() || self.uids.contains(&peer.uid))
            && (self.gids.is_empty() || self.gids.contains(&peer.gid))
    }
}

/// Serves `listener` until `shutdown` completes, then stops accepting, runs
/// `on_stop` (which removes the socket path), lets requests that were
/// already read finish and send their responses, and returns.
pub async fn serve_until_shutdown(
    listener: UnixListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
    on_stop: impl FnOnce(),
) {
    let shutdown_token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut acceptor = Acceptor {
        listener,
        limit: Arc::new(Semaphore::new(config.max_connections)),
        max_connections: config.max_connections,
        per_client: PerClient::new(config.max_connections_per_client),
        connection: Arc::new(config.connection),
        pool: config.pool,
        policy: config.policy,
        refused_log: RateLimited::new(Duration::from_secs(1)),
        shutdown: shutdown_token.clone(),
        tracker: tracker.clone(),
        next_id: AtomicU64::new(1),
        reserve_fd: None,
        over_limit_log: RateLimited::new(Duration::from_secs(10)),
        per_client_log: RateLimited::new(Duration::from_secs(10)),
        accept_error_log: RateLimited::new(Duration::from_secs(10)),
    };
    acceptor.reserve_fd = reserve_fd(&acceptor.listener);
    tokio::select! {
        _ = acceptor.accept_forever() => {}
        _ = shutdown => info!("shutting down: no new connections; finishing requests in flight"),
    }
    // Stop accepting: close the listening socket, then let the caller unlink
    // its path, before waiting for requests in flight (as the reference).
    let Acceptor {
        listener,
        pool,
        connection,
        ..
    } = acceptor;
    drop(listener);
    on_stop();
    shutdown_token.cancel();
    tracker.close();
    // Requests in flight get up to the SG_IO timeout, by which any device
    // that answers at all has answered (D29). After it, requests waiting for
    // a device that did not answer are answered CHECK CONDITION 0B/08/00,
    // and the helper exits without waiting for commands that still execute:
    // they cannot be interrupted, and exiting ends them (a fatal signal
    // stops the kernel's retries on a multipath map); their clients see the
    // connection close.
    let grace = connection.executor.config.sgio_timeout;
    if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
        log_held_back();
        info!("all connections closed");
        return;
    }
    let (cancelled, executing) = pool.close_devices();
    // The cancelled requests' answers need only be written.
    let closed = tokio::time::timeout(FINAL_WRITES, tracker.wait())
        .await
        .is_ok();
    log_held_back();
    warn!(
        "exiting after {grace:?} of shutdown: {cancelled} requests waiting for a device were \
         answered with an error; {executing} commands still executing are abandoned{}",
        if closed {
            ""
        } else {
            " (some connections still open)"
        }
    );
}

/// At shutdown, after the grace period: how long the answers to cancelled
/// requests may take to be written before the helper exits anyway.
const FINAL_WRITES: Duration = Duration::from_secs(1);

struct Acceptor {
    listener: UnixListener,
    limit: Arc<Semaphore>,
    max_connections: usize,
    per_client: PerClient,
    connection: Arc<ConnectionConfig>,
    pool: Pool,
    policy: AccessPolicy,
    refused_log: RateLimited,
    /// Cancelled when shutdown begins; every connection watches it.
    shutdown: CancellationToken,
    /// The connection tasks, waited for at shutdown.
    tracker: TaskTracker,
    next_id: AtomicU64,
    /// An fd kept open to be sacrificed when the process runs out of fds, so
    /// that a pending connection can still be accepted and refused cleanly.
    reserve_fd: Option<OwnedFd>,
    over_limit_log: RateLimited,
    per_client_log: RateLimited,
    accept_error_log: RateLimited,
}

/// Back-off after accept() fails for lack of resources (D10): short enough to
/// recover quickly, long enough never to burn a CPU.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Acceptor {
    /// Accepts forever. Never returns an error: accept failures are logged
    /// (rate-limited) and retried after a back-off, since the helper must
    /// keep serving the connections it has.
    async fn accept_forever(&mut self) {
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    self.admit(stream);
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    let exhausted = is_fd_exhaustion(&e);
                    if exhausted {
                        self.refuse_with_reserve_fd();
                    }
                    if let Some(suppressed) = self.accept_error_log.allow() {
                        if exhausted {
                            warn!(
                                suppressed,
                                "accept failed: {e}; refusing new clients until file descriptors free up"
                            );
                        } else {
                            error!(suppressed, "accept failed: {e}");
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    fn admit(&mut self, stream: tokio::net::UnixStream) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = Peer::of(id, &stream);
        if !self.policy.allows(&peer) {
            // Closed before the handshake: the peer reads EOF.
            if let Some(suppressed) = self.refused_log.allow() {
                warn!(
                    suppressed,
                    "{peer}: refused by the access policy (allowed_uids/allowed_gids)"
                );
            }
            return;
        }
        let client_slot = match self.per_client.count(peer.pid) {
            Counted::Slot(slot) => Some(slot),
            Counted::Uncounted => None,
            Counted::Full => {
                if let Some(suppressed) = self.per_client_log.allow() {
                    warn!(
                    suppressed,
                        "{peer}: refused: {} connections already open from this process (max_connections_per_client)",
                        self.per_client.max
                    );
                }
                return;
            }
        };
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            if let Some(suppressed) = self.over_limit_log.allow() {
                warn!(
                    suppressed,
                    "{peer}: refused: {} connections already open (max_connections)",
                    self.max_connections
                );
            }
            return;
        };
        let config = self.connection.clone();
        let pool = self.pool.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            tracing::debug!("{peer}: accepted");
            let end = connection::serve(stream, peer, config, pool, shutdown).await;
            log_end(&peer, &end);
            drop(client_slot);
            drop(permit);
        });
    }

    /// Out of fds: give up the reserve fd for a moment to accept the oldest
    /// pending client and close it at once, so that clients see a refusal
    /// (EOF) instead of waiting in the backlog.
    fn refuse_with_reserve_fd(&mut self) {
        let Some(reserve) = self.reserve_fd.take() else {
            return;
        };
        drop(reserve);
        if let Ok(refused) = self.accept_std() {
            drop(refused);
        }
        self.reserve_fd = reserve_fd(&self.listener);
    }

    /// A synchronous, non-blocking accept on the listening socket.
    fn accept_std(&self) -> io::Result<OwnedFd> {
        use nix::sys::socket::{accept4, SockFlag};
        Ok(accept4(
            &self.listener,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?)
    }
}

/// Open connections per peer process, for `max_connections_per_client`.
struct PerClient {
    /// 0: no limit (nothing is counted).
    max: usize,
    open: Arc<Mutex<HashMap<i32, usize>>>,
}

/// One counted connection; dropping it (when the connection ends) frees the
/// slot.
struct ClientSlot {
    pid: i32,
    open: Arc<Mutex<HashMap<i32, usize>>>,
}

impl PerClient {
    fn new(max: usize) -> Self {
        PerClient {
            max,
            open: Arc::default(),
        }
    }

    /// Counts one more connection of process `pid` ([`Counted`]). Peers
    /// whose pid the helper cannot see are not counted: no pid, or 0, which
    /// SO_PEERCRED reports for a process in a pid namespace the helper's
    /// does not contain (all of them would share one count).
    fn count(&self, pid: Option<i32>) -> Counted {
        let pid = match pid {
            Some(pid) if pid > 0 && self.max > 0 => pid,
            _ => return Counted::Uncounted,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(pid).or_insert(0);
        if *count >= self.max {
            return Counted::Full;
        }
        *count += 1;
        Counted::Slot(ClientSlot {
            pid,
            open: self.open.clone(),
        })
    }
}

/// What [`PerClient::count`] decided for a new connection.
enum Counted {
    /// Counted against its process; the slot gives the count back when the
    /// connection ends.
    Slot(ClientSlot),
    /// Not counted: the helper cannot see the peer's pid, or there is no
    /// per-client limit.
    Uncounted,
    /// Its process has `max_connections_per_client` open: refused.
    Full,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.pid) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.pid);
            }
        }
    }
}

/// A spare fd: a duplicate of the listener, which needs no filesystem
/// access (the sandbox allows none).
fn reserve_fd(listener: &UnixListener) -> Option<OwnedFd> {
    use std::os::fd::AsFd;
    listener.as_fd().try_clone_to_owned().ok()
}

/// Errors after which accepting again at once is right.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EAGAIN)
    )
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_counts_open_connections_by_pid() {
        let p = PerClient::new(2);
        let a1 = p.count(Some(10));
        let a2 = p.count(Some(10));
        assert!(matches!(a1, Counted::Slot(_)) && matches!(a2, Counted::Slot(_)));
        assert!(
            matches!(p.count(Some(10)), Counted::Full),
            "a third from pid 10"
        );
        // Other processes have their own count; unknown pids none.
        let b = p.count(Some(11));
        assert!(matches!(b, Counted::Slot(_)));
        for _ in 0..5 {
            assert!(matches!(p.count(Some(0)), Counted::Uncounted));
            assert!(matches!(p.count(None), Counted::Uncounted));
        }
        drop(a1);
        let a3 = p.count(Some(10));
        assert!(matches!(a3, Counted::Slot(_)));
        assert!(matches!(p.count(Some(10)), Counted::Full));
        drop((a2, a3, b));
        assert!(p.open.lock().unwrap().is_empty(), "counts freed");
        // 0: no limit, nothing counted.
        let p = PerClient::new(0);
        assert!((0..100).all(|_| matches!(p.count(Some(10)), Counted::Uncounted)));
    }
}
