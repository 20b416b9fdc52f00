//! Termination signals (spec §8.9): SIGTERM, SIGINT and SIGHUP all start a
//! graceful shutdown; only the first one matters.
//!
//! The helper sets up its socket, pidfile and privileges before the async
//! runtime exists, so a signal can arrive before tokio listens for it. A
//! minimal handler installed first thing records such a signal in an atomic
//! flag; tokio's handlers, installed later, chain to it (signal-hook keeps
//! the previous action), and [`terminated`] checks the flag after
//! registering, so no signal is lost in between.

// Unsafe code: sigaction(2) for the early signal handlers.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use tokio::signal::unix::{signal, Signal as TokioSignal, SignalKind};

static EARLY_SIGNAL: AtomicBool = AtomicBool::new(false);

/// The signals that terminate the helper.
pub const TERMINATING: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

extern "C" fn record(_: libc::c_int) {
    // Async-signal-safe: a single atomic store.
    EARLY_SIGNAL.store(true, Ordering::SeqCst);
}

/// Installs the early handler for every terminating signal.
pub fn install_early() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(record),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in TERMINATING {
        // SAFETY: `record` only performs an atomic store, which is
        // async-signal-safe, and it never unwinds.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Completes when a terminating signal has been received (including one
/// that arrived before this was called, if [`install_early`] ran).
pub async fn terminated() {
    let mut term = listen(SignalKind::terminate());
    let mut int = listen(SignalKind::interrupt());
    let mut hup = listen(SignalKind::hangup());
    // Registered above; anything earlier was recorded by the early handler.
    if EARLY_SIGNAL.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = next(&mut term) => {}
        _ = next(&mut int) => {}
        _ = next(&mut hup) => {}
    }
}

fn listen(kind: SignalKind) -> Option<TokioSignal> {
    signal(kind)
        .map_err(|e| tracing::error!("cannot listen for signal {kind:?}: {e}"))
        .ok()
}

/// The next delivery of a signal; never, if it could not be registered.
async fn next(sig: &mut Option<TokioSignal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
