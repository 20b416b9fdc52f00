//! Executing one persistent-reservation command: the read-only check, the
//! SG_IO call and the reply the client gets (spec §4).
//!
//! [`execute`] blocks for as long as the device takes (up to the SG_IO
//! timeout, or for ever on a device that never answers); the connection
//! code runs it on the SG_IO pool, at most two at once per device unless it
//! is answering (D29).

use std::os::fd::{AsFd, OwnedFd};
#[cfg(feature = "mpath")]
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{Direction, Request, Response, MAX_TRANSFER};
use crate::scsi::sgio::{self, DataPhase};
use crate::scsi::{self, Completion, SenseCode};
use crate::server::device::{self, Inspected};
use crate::server::isolation::{Admission, DevKey};
#[cfg(feature = "mpath")]
use crate::server::pool::DevicePlace;
use crate::server::pool::Pool;
use crate::server::ratelimit::RateLimited;
use crate::server::reply::{response, Responder};

/// Settings that shape command execution.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// SG_IO timeout (D4).
    pub sgio_timeout: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            sgio_timeout: Duration::from_secs(30),
        }
    }
}

/// Executes requests: SG_IO on the calling (pool) thread, or, for
/// dm-multipath devices in an `mpath` build, on the multipath worker.
#[derive(Debug, Clone, Default)]
pub struct Executor {
    /// SG_IO settings.
    pub config: ExecConfig,
    /// Multipath support, when compiled in and enabled.
    #[cfg(feature = "mpath")]
    pub multipath: Option<Arc<dyn MultipathBackend>>,
}

/// What the server needs of multipath support, which `crate::mpath`
/// implements beside the server: whether an fd is a dm-multipath map, and
/// handing it a request to answer. A trait, so that dependencies point one
/// way: multipath uses the server's reply handle, device place and fd
/// inspection, and the server does not import multipath (one dynamic call
/// per multipath request and one per detection, in `mpath` builds only).
#[cfg(feature = "mpath")]
pub trait MultipathBackend: Send + Sync + std::fmt::Debug {
    /// True if `fd` is a dm-multipath device (called on a pool thread).
    fn detect(&self, fd: &Inspected) -> Result<bool, Box<dyn std::error::Error + Send + Sync>>;
    /// Takes `request` to answer through `responder`; `place` is its place
    /// on the map (D29), given up once it is answered.
    fn submit(&self, request: Request<OwnedFd>, responder: Responder, place: DevicePlace);
}

impl Executor {
    /// An executor for SG_IO only (multipath is added by start-up when
    /// compiled in and enabled).
    pub fn new(config: ExecConfig) -> Self {
        Executor {
            config,
            #[cfg(feature = "mpath")]
            multipath: None,
        }
    }

    /// Inspects `request`'s fd (once: [`Inspected`]) and decides how it is
    /// executed; answers it at once when its fd is refused or multipath
    /// detection fails.
    ///
    /// Order: a PR OUT on a read-only fd goes on to SG_IO, whose read-only
    /// check refuses it (spec §4.1, as the reference); then the fd itself is
    /// checked ([`device::check`]: O_PATH, partitions, partial dm targets;
    /// D27, D28), for SG_IO and multipath alike; then multipath detection.
    /// READ FULL STATUS on a multipath map is executed with SG_IO on the
    /// map, which dm forwards to a path (D14), not through libmpathpersist.
    pub fn route(&self, request: Request<OwnedFd>) -> Routed {
        let fd = Inspected::of(request.fd.as_fd());
        let route = self.route_of(&request, &fd);
        Routed { request, fd, route }
    }

    /// The decision [`Executor::route`] describes, made once per request.
    fn route_of(&self, request: &Request<OwnedFd>, fd: &Inspected) -> Route {
        if request.direction == Direction::Out && fd.is_read_only() {
            return Route::Sgio;
        }
        if let Err(refused) = device::check(fd) {
            log_refusal(&refused);
            return Route::Answered(response(refused.completion(), Vec::new()));
        }
        #[cfg(feature = "mpath")]
        if let Some(multipath) = &self.multipath {
            match multipath.detect(fd) {
                Ok(false) => {}
                Ok(true) if is_read_full_status(request) => {}
                Ok(true) => return Route::Multipath(multipath.clone()),
                Err(e) => {
                    // D6: the reference exits; only this request fails.
                    tracing::warn!("multipath detection failed: {e}");
                    return Route::Answered(response(
                        Completion::check_condition(SenseCode::LUN_COMM_FAILURE),
                        Vec::new(),
                    ));
                }
            }
        }
        Route::Sgio
    }

    /// Runs a routed request on the calling thread (it blocks for as long
    /// as the device takes) if its device has a place free (D29); otherwise,
    /// and for a dm-multipath device, the request is returned untouched, to
    /// be queued with [`Executor::run_when_free`].
    pub fn run_here(&self, routed: Routed, pool: &Pool) -> Attempt {
        let Routed { request, fd, route } = routed;
        match route {
            Route::Answered(response) => Attempt::Executed(request, response),
            Route::Sgio => {
                let key = DevKey::inspected(&fd);
                match pool.run_on_device(key, || execute(&request, &fd, &self.config)) {
                    Some(response) => Attempt::Executed(request, response),
                    None => Attempt::Deferred(Routed {
                        request,
                        fd,
                        route: Route::Sgio,
                    }),
                }
            }
            #[cfg(feature = "mpath")]
            Route::Multipath(multipath) => Attempt::Deferred(Routed {
                request,
                fd,
                route: Route::Multipath(multipath),
            }),
        }
    }

    /// Runs a routed request and sends its response through `responder`,
    /// on the calling pool thread, or later if its device already executes
    /// its bound of commands (D29): then the request waits, without a
    /// thread, and runs on a pool thread once the device has a place free
    /// (or is answered CHECK CONDITION 0B/08/00 if shutdown gives up on the
    /// device). Requests for dm-multipath devices go on to the multipath
    /// worker, holding their place on the map until answered.
    pub fn run_when_free(&self, routed: Routed, responder: Responder, pool: &Pool) {
        let Routed { request, fd, route } = routed;
        match route {
            Route::Answered(response) => responder.send(request, response),
            Route::Sgio => {
                let config = self.config.clone();
                pool.enter_or_wait(
                    DevKey::inspected(&fd),
                    Box::new(move |admission| match admission {
                        Admission::Run(place) => {
                            let response = execute(&request, &fd, &config);
                            drop(place);
                            responder.send(request, response);
                        }
                        Admission::Cancelled => responder.send(request, cancelled()),
                    }),
                );
            }
            #[cfg(feature = "mpath")]
            Route::Multipath(multipath) => {
                pool.enter_or_wait(
                    DevKey::inspected(&fd),
                    Box::new(move |admission| match admission {
                        Admission::Run(place) => multipath.submit(request, responder, place),
                        Admission::Cancelled => responder.send(request, cancelled()),
                    }),
                );
            }
        }
    }
}

/// A request whose fd has been inspected and whose route of execution is
/// decided ([`Executor::route`]), ready for [`Executor::run_here`] or
/// [`Executor::run_when_free`].
pub struct Routed {
    request: Request<OwnedFd>,
    fd: Inspected,
    route: Route,
}

/// READ FULL STATUS exactly (the whole CDB byte 1, as the multipath
/// worker compares it: reserved bits set go to the worker, which refuses).
#[cfg(feature = "mpath")]
fn is_read_full_status(request: &Request<OwnedFd>) -> bool {
    request.direction == Direction::In && request.cdb[1] == crate::scsi::pr::sa_in::READ_FULL_STATUS
}

/// Refusals are logged at warning level, at most one line every 10 s (a
/// client could send thousands a second).
fn log_refusal(refused: &device::Refused) {
    static LIMIT: std::sync::Mutex<RateLimited> =
        std::sync::Mutex::new(RateLimited::new(Duration::from_secs(10)));
    let mut limit = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(suppressed) = limit.allow() {
        if suppressed > 0 {
            tracing::warn!(
                "refused a persistent-reservation command: {refused} ({suppressed} more refusals not logged)"
            );
        } else {
            tracing::warn!("refused a persistent-reservation command: {refused}");
        }
    }
}

/// How a request is executed.
enum Route {
    /// Already answered (the fd is refused, or multipath detection failed).
    Answered(Response),
    /// With SG_IO on a pool thread.
    Sgio,
    /// By the multipath worker.
    #[cfg(feature = "mpath")]
    Multipath(Arc<dyn MultipathBackend>),
}

/// What [`Executor::run_here`] did with a request: executed it, or left it
/// for later.
pub enum Attempt {
    /// Executed: the request (its fd still open) and its response.
    Executed(Request<OwnedFd>, Response),
    /// Not executed: its device already executes its bound of commands, or
    /// it is for a dm-multipath device. Queue it with [`Executor::run_when_free`].
    Deferred(Routed),
}

/// The answer to a request that waited for a device that did not answer
/// before shutdown gave up on it (D29): CHECK CONDITION, LOGICAL UNIT
/// COMMUNICATION FAILURE, what QEMU reports to the guest when it loses the
/// helper.
pub fn cancelled() -> Response {
    response(
        Completion::check_condition(SenseCode::LUN_COMM_FAILURE),
        Vec::new(),
    )
}

/// Runs `request` with SG_IO and builds the response (which the caller
/// sends); `fd` is its fd, inspected.
pub fn execute(request: &Request<OwnedFd>, fd: &Inspected, config: &ExecConfig) -> Response {
    match request.direction {
        Direction::In => persistent_reserve_in(request, config),
        Direction::Out => persistent_reserve_out(request, fd, config),
    }
}

fn persistent_reserve_in(request: &Request<OwnedFd>, config: &ExecConfig) -> Response {
    // Like the reference, ask the kernel for up to the full 8192 bytes; the
    // device itself honours the allocation length in the CDB, and what the
    // client receives is truncated to it below.
    let mut buf = vec![0u8; MAX_TRANSFER];
    let outcome = sgio::execute(
        request.fd.as_fd(),
        &request.cdb,
        DataPhase::FromDevice(&mut buf),
        config.sgio_timeout,
    );
    let completion = scsi::complete(outcome, buf.len());
    buf.truncate(completion.transferred.min(request.transfer_len));
    response(completion, buf)
}

fn persistent_reserve_out(
    request: &Request<OwnedFd>,
    fd: &Inspected,
    config: &ExecConfig,
) -> Response {
    // The read-only rule (spec §4.1): see `Inspected::is_read_only`.
    if fd.is_read_only() {
        return response(
            Completion::check_condition(SenseCode::INVALID_OPCODE),
            Vec::new(),
        );
    }
    let outcome = sgio::execute(
        request.fd.as_fd(),
        &request.cdb,
        DataPhase::ToDevice(&request.params),
        config.sgio_timeout,
    );
    response(scsi::complete(outcome, request.params.len()), Vec::new())
}
