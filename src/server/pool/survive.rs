//! How the pool lives through a panic: work runs under [`caught`], so a
//! panicking request is logged and dropped (whatever it owned, such as its
//! reply channel, is dropped too, which the waiting side sees) while the
//! thread carries on; and the pool's own locks are taken with [`lock`],
//! which ignores poisoning.

use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard};

/// Takes `m` even if a thread panicked while holding it. Work never runs
/// under the pool's locks, so a poisoned lock only means a panic in the
/// pool's bookkeeping; keep going.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`; a panic is logged as an error, `what` first, and gives None.
pub(super) fn caught<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            tracing::error!("{what}: {}", panic_message(&*p));
            None
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
