//! The multipath worker: one dedicated thread makes every libmpathpersist
//! call (D8). The library is not known to be thread-safe (it keeps global
//! state: its configuration, udev context, the prkeys file and its
//! semaphores), so calls stay serialised as in the reference, but they never
//! block the event loop or the SG_IO pool: other clients' requests and new
//! connections go on while a library call waits for a slow path or for
//! multipathd.
//!
//! What can hang for ever on a map is SG_IO on the map itself: with
//! `queue_if_no_path` and no usable path, the kernel retries it every 10 ms
//! until a path returns. The library does not do that (it sends its
//! commands to path devices, which fail at once when the path is down), but
//! the TEST UNIT READY probe after a library error does. So the probe does
//! not run here: it runs on the SG_IO pool, holding the map's place there
//! (D29), and a map that hangs holds at most two pool threads while this
//! thread serves the other maps. Requests for a map that has its two places
//! taken wait in the pool without reaching this thread.
//!
//! A panic while handling a request is caught, as on the pool: the request
//! is dropped unanswered (its connection ends with an internal error) and
//! the thread goes on with the next one.

use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::detect::{Control, DetectError};
use super::ffi;
use super::translate::{self, Mapped};
use crate::protocol::{Direction, Request, Response};
use crate::scsi::sgio::{self, DataPhase};
use crate::scsi::{self, status, Completion, SenseCode, TEST_UNIT_READY};
use crate::server::command::MultipathBackend;
use crate::server::device::Inspected;
use crate::server::pool::DevicePlace;
use crate::server::reply::{response, Responder};

/// Why multipath support could not start (D7: the reference ignores these).
#[derive(Debug, Error)]
pub enum InitError {
    /// Device-mapper is unusable.
    #[error("{0} (multipath support needs /dev/mapper/control and CAP_SYS_ADMIN; set multipath = false to run without it)")]
    DeviceMapper(#[from] DetectError),
    /// libmpathpersist failed to initialise.
    #[error("{0} (set multipath = false to run without multipath support)")]
    Library(#[from] ffi::LibraryInitError),
    /// The worker thread could not start.
    #[error("cannot start the multipath worker thread: {0}")]
    Thread(std::io::Error),
}

/// Logged once at start-up when libmpathpersist predates multipath-tools
/// 0.13 (issue 20): the flows its reservation rework fixed, which this
/// library gets wrong.
pub const OLD_LIBRARY: &str = "libmpathpersist is older than multipath-tools 0.13: \
    these flows leave paths of a map unregistered or fail: PREEMPT of the map's own key \
    (QEMU 11's migrate-pr after live migration: the map's other paths lose their \
    registration), RELEASE or unregister while the path holding the reservation is down, \
    PREEMPT of an all-registrants reservation (types 7 and 8), a path failing during \
    REGISTER; use multipath-tools 0.13 or later";

/// Multipath support prepared at start-up (single-threaded: before the
/// privilege drop and before any thread exists).
#[derive(Debug)]
pub struct Prepared {
    control: Control,
}

impl Prepared {
    /// Opens device-mapper and initialises libmpathpersist (spec §7.1).
    pub fn init() -> Result<Prepared, InitError> {
        let control = Control::open()?;
        ffi::init()?;
        if !ffi::library_is_0_13_or_later() {
            tracing::warn!("{OLD_LIBRARY}");
        }
        Ok(Prepared { control })
    }

    /// Starts the worker thread. `verbosity` is pr-helper's (0–4);
    /// `sgio_timeout` applies to the TEST UNIT READY probe.
    pub fn start(self, verbosity: u8, sgio_timeout: Duration) -> Result<Multipath, InitError> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let settings = Settings {
            verbose: verbosity.min(3),
            noisy: verbosity >= 3,
            sgio_timeout,
        };
        std::thread::Builder::new()
            .name("prh-mpath".into())
            .spawn(move || work(jobs, |job| handle(job, &settings)))
            .map_err(InitError::Thread)?;
        Ok(Multipath {
            control: Arc::new(self.control),
            queue,
        })
    }
}

struct Settings {
    verbose: u8,
    noisy: bool,
    sgio_timeout: Duration,
}

struct Job {
    request: Request<OwnedFd>,
    responder: Responder,
    /// The request's place on its map (D29), held until it is answered.
    place: DevicePlace,
}

/// The worker's loop: `handle` for each job, in order, until every sender
/// is gone. A panic in `handle` is logged and drops that job (as the SG_IO
/// pool does with a panicking request), and the loop goes on.
fn work<J>(jobs: mpsc::Receiver<J>, mut handle: impl FnMut(J)) {
    for job in jobs {
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| handle(job))) {
            let message = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!("a request panicked on the multipath worker: {message}");
        }
    }
}

/// One library call; the probe, if the library's answer needs one, goes to
/// the SG_IO pool.
fn handle(job: Job, s: &Settings) {
    let Job {
        request,
        responder,
        place,
    } = job;
    match execute(&request, s) {
        Outcome::Answer(response) => {
            drop(place);
            responder.send(request, response);
        }
        Outcome::Probe(generic) => {
            let timeout = s.sgio_timeout;
            let pool = place.pool().clone();
            pool.spawn(move || {
                let completion = probe(&request, generic, timeout);
                drop(place);
                responder.send(request, response(completion, Vec::new()));
            });
        }
    }
}

/// Handle to running multipath support; cheap to clone.
#[derive(Debug, Clone)]
pub struct Multipath {
    control: Arc<Control>,
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl MultipathBackend for Multipath {
    fn detect(&self, fd: &Inspected) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.control.is_multipath(fd)?)
    }

    /// Queues a request for the worker, which answers it; `place` is its
    /// place on the map, released once it is answered.
    fn submit(&self, request: Request<OwnedFd>, responder: Responder, place: DevicePlace) {
        let job = Job {
            request,
            responder,
            place,
        };
        if let Err(mpsc::SendError(job)) = self.queue.send(job) {
            // The worker is gone (it panicked): answer as a failed library call.
            tracing::error!("the multipath worker is not running");
            let response = response(
                Completion::check_condition(SenseCode::LUN_COMM_FAILURE),
                Vec::new(),
            );
            job.responder.send(job.request, response);
        }
    }
}

/// What a library call leads to.
enum Outcome {
    /// The response.
    Answer(Response),
    /// The library dropped the device's sense: probe the device with TEST
    /// UNIT READY, answering with this generic sense if that is GOOD.
    Probe(SenseCode),
}

/// One library call and its translation (spec §7.3–§7.5).
fn execute(request: &Request<OwnedFd>, s: &Settings) -> Outcome {
    let fd = request.fd.as_fd();
    match request.direction {
        Direction::In => {
            let sa = match translate::parse_pr_in(&request.cdb) {
                Ok(sa) => sa,
                Err(sense) => return refused(sense),
            };
            let (rc, reply) = ffi::reserve_in(fd, sa, s.noisy, s.verbose);
            answer_for(rc).unwrap_or_else(|| {
                Outcome::Answer(Response {
                    status: status::GOOD,
                    sense: [0; crate::protocol::SENSE_SIZE],
                    data: translate::build_pr_in(&reply, request.transfer_len),
                })
            })
        }
        Direction::Out => {
            let prout = match translate::parse_pr_out(&request.cdb, &request.params) {
                Ok(p) => p,
                Err(sense) => return refused(sense),
            };
            let rc = ffi::reserve_out(fd, &prout, s.noisy, s.verbose);
            answer_for(rc).unwrap_or_else(|| Outcome::Answer(Response::status_only(status::GOOD)))
        }
    }
}

fn refused(sense: SenseCode) -> Outcome {
    Outcome::Answer(response(Completion::check_condition(sense), Vec::new()))
}

/// `None` for success, else what to answer with.
fn answer_for(rc: i32) -> Option<Outcome> {
    match translate::map_result(rc) {
        Mapped::Status(status::GOOD, _) => None,
        Mapped::Status(st, sense) => Some(Outcome::Answer(response(
            Completion {
                status: st,
                sense: sense
                    .map(|c| c.fixed_buffer())
                    .unwrap_or([0; crate::protocol::SENSE_SIZE]),
                transferred: 0,
            },
            Vec::new(),
        ))),
        Mapped::ProbeTur(generic) => Some(Outcome::Probe(generic)),
    }
}

/// The library dropped the device's sense; ask the device (on a pool
/// thread: on a map with `queue_if_no_path` and no path this blocks until a
/// path returns).
fn probe(request: &Request<OwnedFd>, generic: SenseCode, timeout: Duration) -> Completion {
    let tur = [TEST_UNIT_READY, 0, 0, 0, 0, 0];
    let outcome = sgio::execute(request.fd.as_fd(), &tur, DataPhase::None, timeout);
    let c = scsi::complete(outcome, 0);
    if c.status != status::GOOD {
        c
    } else {
        Completion::check_condition(generic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_request_is_dropped_and_the_worker_goes_on() {
        // The injection point is the handler the loop is given: this one
        // panics on request 1, as a bug in translation or the binding would.
        let (queue, jobs) = mpsc::channel::<(u32, mpsc::Sender<u32>)>();
        let worker = std::thread::spawn(move || {
            work(jobs, |(n, reply)| {
                assert_ne!(n, 1, "injected panic");
                reply.send(n * 10).unwrap();
            })
        });
        let ask = |n| {
            let (tx, rx) = mpsc::channel();
            queue.send((n, tx)).expect("the worker is running");
            rx.recv_timeout(Duration::from_secs(5))
        };
        assert_eq!(ask(0), Ok(0));
        // The panicking request is dropped unanswered (its reply channel
        // closes, as a Responder's does) ...
        assert_eq!(ask(1), Err(mpsc::RecvTimeoutError::Disconnected));
        // ... and the worker serves the next ones.
        assert_eq!(ask(2), Ok(20));
        assert_eq!(ask(3), Ok(30));
        drop(queue);
        worker.join().unwrap();
    }
}
