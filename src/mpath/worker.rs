//! The multipath worker: one dedicated thread makes every libmpathpersist
//! call (D8). The library is not known to be thread-safe, so calls stay
//! serialised as in the reference, but they never block the event loop or
//! the SG_IO pool: other clients' requests and new connections go on while
//! a library call waits for a slow path or for multipathd.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::detect::{Control, DetectError};
use super::ffi;
use super::translate::{self, Mapped};
use crate::command::response;
use crate::connection::Responder;
use crate::protocol::{Direction, Request, Response};
use crate::scsi::sgio::{self, DataPhase};
use crate::scsi::{self, status, Completion, SenseCode, TEST_UNIT_READY};

/// Why multipath support could not start (D7: the reference ignores these).
#[derive(Debug, Error)]
pub enum InitError {
    /// Device-mapper is unusable.
    #[error("{0} (multipath support needs /dev/mapper/control and CAP_SYS_ADMIN; set multipath = false to run without it)")]
    DeviceMapper(#[from] DetectError),
    /// libmpathpersist failed to initialise.
    #[error("{0} (set multipath = false to run without multipath support)")]
    Library(String),
    /// The worker thread could not start.
    #[error("cannot start the multipath worker thread: {0}")]
    Thread(std::io::Error),
}

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
        ffi::init().map_err(InitError::Library)?;
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
            .spawn(move || {
                for job in jobs {
                    let response = execute(&job.request, &settings);
                    job.responder.send(job.request, response);
                }
            })
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

impl Multipath {
    /// True if `fd` is a dm-multipath device (called on a pool thread).
    pub fn detect(&self, fd: &OwnedFd) -> Result<bool, DetectError> {
        self.control.is_multipath(fd)
    }

    /// Queues a request for the worker, which answers it.
    pub fn submit(&self, request: Request<OwnedFd>, responder: Responder) {
        if let Err(mpsc::SendError(job)) = self.queue.send(Job { request, responder }) {
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

/// One library call and its translation (spec §7.3–§7.5).
fn execute(request: &Request<OwnedFd>, s: &Settings) -> Response {
    let fd = request.fd.as_fd();
    match request.direction {
        Direction::In => {
            let sa = match translate::parse_pr_in(&request.cdb) {
                Ok(sa) => sa,
                Err(sense) => return response(Completion::check_condition(sense), Vec::new()),
            };
            let (rc, reply) = ffi::reserve_in(fd, sa, s.noisy, s.verbose);
            match finish(rc, request, s) {
                Some(completion) => response(completion, Vec::new()),
                None => Response {
                    status: status::GOOD,
                    sense: [0; crate::protocol::SENSE_SIZE],
                    data: translate::build_pr_in(&reply, request.transfer_len),
                },
            }
        }
        Direction::Out => {
            let prout = match translate::parse_pr_out(&request.cdb, &request.params) {
                Ok(p) => p,
                Err(sense) => return response(Completion::check_condition(sense), Vec::new()),
            };
            let rc = ffi::reserve_out(fd, &prout, s.noisy, s.verbose);
            match finish(rc, request, s) {
                Some(completion) => response(completion, Vec::new()),
                None => Response::status_only(status::GOOD),
            }
        }
    }
}

/// `None` for success, else the completion to answer with.
fn finish(rc: i32, request: &Request<OwnedFd>, s: &Settings) -> Option<Completion> {
    match translate::map_result(rc) {
        Mapped::Status(status::GOOD, _) => None,
        Mapped::Status(st, sense) => Some(Completion {
            status: st,
            sense: sense
                .map(|c| c.fixed_buffer())
                .unwrap_or([0; crate::protocol::SENSE_SIZE]),
            transferred: 0,
        }),
        Mapped::ProbeTur(generic) => {
            // The library dropped the device's sense; ask the device.
            let tur = [TEST_UNIT_READY, 0, 0, 0, 0, 0];
            let outcome = sgio::execute(request.fd.as_fd(), &tur, DataPhase::None, s.sgio_timeout);
            let c = scsi::complete(outcome, 0);
            Some(if c.status != status::GOOD {
                c
            } else {
                Completion::check_condition(generic)
            })
        }
    }
}
