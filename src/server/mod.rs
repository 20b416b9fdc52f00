//! The server: what turns a listening socket into answered requests.
//!
//! * [`listener`]: the socket, made in a private directory and renamed into
//!   place;
//! * [`accept`]: the accept loop, the connection limits, graceful shutdown;
//! * [`connection`]: one client, from handshake to its last reply;
//! * [`command`]: one request: read-only check, device check, SG_IO or
//!   multipath, the reply;
//! * [`device`]: which fds may carry a PR command;
//! * [`isolation`]: at most two commands at once per device;
//! * [`pool`]: the threads that run SG_IO off the event loop;
//! * [`audit`]: one record per PR OUT;
//! * [`ratelimit`]: log lines at a limited rate.

pub mod accept;
pub mod audit;
pub mod command;
pub mod connection;
pub mod device;
pub mod isolation;
pub mod listener;
pub mod pool;
pub mod ratelimit;
