//! A rate limit for log lines that a client or a failing system call could
//! otherwise repeat every few milliseconds (D10, D18, the pool's
//! thread-start warning, device refusals). It sits below the server so that
//! every layer can keep one without importing the server.

use std::time::{Duration, Instant};

/// Lets a log line through at most once per interval and counts what it held
/// back.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// A limiter that allows one message per `interval` (const: a warning
    /// site can keep its own in a `static`).
    pub const fn new(interval: Duration) -> Self {
        RateLimited {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number of messages suppressed since the last one)` if this one
    /// may be logged.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(r.allow(), Some(2));
    }
}
