//! The server: what turns a listening socket into answered requests.
//!
//! * [`listener`]: the socket, made in a private directory and renamed into
//!   place;
//! * [`accept`]: the accept loop, the connection limits, graceful shutdown;
//! * [`connection`]: one client's task, from handshake to its last reply:
//!   parks the connection in the pool and does the waits that need no
//!   thread;
//! * [`request`]: the way of one request (pull, route, execute, respond),
//!   and the one driver that walks it;
//! * [`peer`]: who is on the other end;
//! * [`session`]: reading and decoding requests;
//! * [`reply`]: answering a request: response, log, audit, write;
//! * [`end`]: why a connection ended;
//! * [`command`]: one request: read-only check, device check, SG_IO or
//!   multipath, the reply;
//! * [`device`]: which fds may carry a PR command;
//! * [`isolation`]: at most two commands at once per device (more on one that
//!   is answering);
//! * [`pool`]: the threads that run SG_IO off the event loop;
//! * [`audit`]: one record per PR OUT;
//! * [`ratelimit`]: log lines at a limited rate.

pub mod accept;
pub mod audit;
pub mod command;
pub mod connection;
pub mod device;
pub mod end;
pub mod isolation;
pub mod listener;
pub mod peer;
pub mod pool;
pub mod ratelimit;
pub mod reply;
pub mod request;
pub mod session;
