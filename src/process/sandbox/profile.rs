//! The two builds the sandbox knows: plain SG_IO, or with libmpathpersist.

/// Which build the filters are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// SG_IO only: fds arrive over the socket.
    Plain,
    /// With libmpathpersist, which opens path devices, reads sysfs and
    /// multipath.conf, and talks to multipathd.
    Multipath,
}
