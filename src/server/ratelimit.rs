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

/// Lets through at most `burst` log lines per `window` and counts the
/// rest: for warnings that one source may repeat, where the first few each
/// say something (which peer, what it did) and the rest only how many.
#[derive(Debug, Clone)]
pub struct Burst {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Burst {
    /// At most `burst` lines in each `window`.
    pub const fn new(window: Duration, burst: u32) -> Self {
        Burst {
            window,
            burst,
            start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// At `now`: `Some(lines held back since the last one let through)` if
    /// this line may be logged, else None (and it is counted).
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|start| now.duration_since(start) >= self.window)
        {
            self.start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Counts `n` lines as held back after all: one let through here but
    /// held back by a wider limit, plus the count that [`Burst::allow_at`]
    /// had just handed over with it.
    pub fn held_back(&mut self, n: u64) {
        self.suppressed += n;
    }

    /// True when the current window is over at `now` (nothing logged in it
    /// would be held back any more).
    pub fn expired_at(&self, now: Instant) -> bool {
        self.start
            .is_none_or(|start| now.duration_since(start) >= self.window)
            && self.suppressed == 0
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

    #[test]
    fn burst_lets_the_first_lines_of_each_window_through() {
        let t0 = Instant::now();
        let mut b = Burst::new(Duration::from_secs(10), 3);
        assert_eq!(b.allow_at(t0), Some(0));
        assert_eq!(b.allow_at(t0), Some(0));
        assert_eq!(b.allow_at(t0), Some(0));
        assert_eq!(b.allow_at(t0), None);
        b.held_back(1);
        assert_eq!(b.allow_at(t0 + Duration::from_secs(9)), None);
        assert!(!b.expired_at(t0 + Duration::from_secs(11)), "three untold");
        // A new window: the first line tells how many were held back.
        assert_eq!(b.allow_at(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(b.allow_at(t0 + Duration::from_secs(10)), Some(0));
        assert!(b.expired_at(t0 + Duration::from_secs(20)));
    }
}
