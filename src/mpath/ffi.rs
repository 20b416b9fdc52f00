//! The libmpathpersist binding: hand-written declarations of the parts of
//! `mpath_persist.h` pr-helper uses. Every struct is `#[repr(C)]` with the
//! header's field order; `layout()` reports sizes and offsets so that a test
//! (tests/mpath_layout.rs) can compare them with a C program compiled
//! against the real header.
//!
//! The library's `unsafe` (its globals and calls, the reply buffers) is in
//! this file; the device-mapper ioctls in `detect.rs` have their own
//! `unsafe` blocks.

// Unsafe code: the libmpathpersist binding (its global and its calls).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, c_uint};

use super::translate::{PrinReply, ProutRequest, TransportId, MAX_TRANSPORT_IDS};

/// MPATH_MAX_PARAM_LEN.
pub const MAX_PARAM_LEN: usize = 8192;
/// Size of `struct transportid`'s name union (the iSCSI name).
const TID_NAME_LEN: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
struct PrinReaddescr {
    prgeneration: u32,
    additional_length: u32,
    key_list: [u8; MAX_PARAM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PrinCapdescr {
    length: u16,
    flags: [u8; 2],
    pr_type_mask: u16,
    reserved: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Transportid {
    format_code: u8,
    protocol_id: u8,
    /// Union of n_port_name[8], sas_address[8], iscsi_name[256].
    name: [u8; TID_NAME_LEN],
}

/// `struct prin_resp` (a union of the four reply layouts; the READ
/// RESERVATION layout overlays READ KEYS, so it is read through that one).
/// The READ FULL STATUS layout (`struct print_fulldescr_list`) is not
/// declared: pr-helper never asks the library for READ FULL STATUS (D14;
/// its decoding overruns `private_buffer` from about 31 descriptors). It is
/// 8200 bytes like READ KEYS, so the union's size is unchanged; the buffer
/// handed to the library is 8-byte aligned in any case.
#[repr(C)]
union PrinResp {
    readkeys: PrinReaddescr,
    readcap: PrinCapdescr,
}

#[repr(C)]
struct ProutParamDescriptor {
    key: [u8; 8],
    sa_key: [u8; 8],
    obsolete: u32,
    sa_flags: u8,
    reserved: u8,
    obsolete1: u16,
    private_buffer: [u8; MAX_PARAM_LEN],
    num_transportid: u32,
    // Followed by `struct transportid *trnptid_list[]`.
    trnptid_list: [*mut Transportid; 0],
}

extern "C" {
    static mut mpath_mx_alloc_len: c_uint;
    fn libmpathpersist_init() -> c_int;
    fn mpath_persistent_reserve_in(
        fd: c_int,
        rq_servact: c_int,
        resp: *mut PrinResp,
        noisy: c_int,
        verbose: c_int,
    ) -> c_int;
    fn mpath_persistent_reserve_out(
        fd: c_int,
        rq_servact: c_int,
        rq_scope: c_int,
        rq_type: c_uint,
        paramp: *mut ProutParamDescriptor,
        noisy: c_int,
        verbose: c_int,
    ) -> c_int;
}

/// Sizes and offsets of the structs as this binding lays them out, as
/// `(name, value)` pairs named `sizeof(struct x)` / `offsetof(struct x, f)`.
pub fn layout() -> Vec<(&'static str, usize)> {
    use std::mem::{offset_of, size_of};
    vec![
        ("sizeof(struct prin_readdescr)", size_of::<PrinReaddescr>()),
        (
            "offsetof(struct prin_readdescr, key_list)",
            offset_of!(PrinReaddescr, key_list),
        ),
        ("sizeof(struct prin_capdescr)", size_of::<PrinCapdescr>()),
        (
            "offsetof(struct prin_capdescr, pr_type_mask)",
            offset_of!(PrinCapdescr, pr_type_mask),
        ),
        ("sizeof(struct transportid)", size_of::<Transportid>()),
        ("sizeof(struct prin_resp)", size_of::<PrinResp>()),
        (
            "sizeof(struct prout_param_descriptor)",
            size_of::<ProutParamDescriptor>(),
        ),
        (
            "offsetof(struct prout_param_descriptor, sa_flags)",
            offset_of!(ProutParamDescriptor, sa_flags),
        ),
        (
            "offsetof(struct prout_param_descriptor, private_buffer)",
            offset_of!(ProutParamDescriptor, private_buffer),
        ),
        (
            "offsetof(struct prout_param_descriptor, num_transportid)",
            offset_of!(ProutParamDescriptor, num_transportid),
        ),
        (
            "offsetof(struct prout_param_descriptor, trnptid_list)",
            offset_of!(ProutParamDescriptor, trnptid_list),
        ),
    ]
}

/// A zeroed, 8-byte aligned buffer of at least `bytes` bytes.
fn zeroed_words(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.div_ceil(8)]
}

/// libmpathpersist_init() failed, with this return code.
#[derive(Debug, thiserror::Error)]
#[error(
    "libmpathpersist_init() failed ({0}): check /etc/multipath.conf and that udev is available"
)]
pub struct LibraryInitError(pub c_int);

/// Initialises the library (udev, /etc/multipath.conf) and sets the
/// allocation length it uses for its own PR IN commands to 8192, as the
/// reference does. Call once, single-threaded.
pub fn init() -> Result<(), LibraryInitError> {
    // SAFETY: called once at start-up before any other thread exists, so
    // nothing else reads or writes the library's global concurrently; the
    // library reads it only inside its PR IN calls, which come later.
    unsafe {
        mpath_mx_alloc_len = MAX_PARAM_LEN as c_uint;
    }
    // SAFETY: a plain C call with no arguments; the library keeps its own
    // state and returns non-zero on failure.
    let rc = unsafe { libmpathpersist_init() };
    if rc != 0 {
        return Err(LibraryInitError(rc));
    }
    Ok(())
}

/// Whether the libmpathpersist the process loaded comes from
/// multipath-tools 0.13 or later, whose reworked reservation code
/// re-registers a map's other paths after a PREEMPT of its own key, handles
/// paths that are down, and preempts all-registrants reservations. Known by
/// the library's internal symbol version: `__LIBMPATHPERSIST_INT_2.1.0`
/// from 0.13.0 on (1.0.0 in 0.9, 1.1.0 in 0.11 and 0.12), which its
/// `prin_do_scsi_ioctl` carries. The public interface is the same in all.
/// Only glibc can look up a symbol by version (`dlvsym`); elsewhere (a musl
/// target, where this is only type-checked: libmpathpersist is built
/// against glibc) the answer is "yes", so nothing is claimed.
pub fn library_is_0_13_or_later() -> bool {
    #[cfg(target_env = "gnu")]
    {
        const SYMBOL: &std::ffi::CStr = c"prin_do_scsi_ioctl";
        const VERSION: &std::ffi::CStr = c"__LIBMPATHPERSIST_INT_2.1.0";
        // SAFETY: both strings are NUL-terminated and live for the call;
        // the result is only compared with null, never called or read.
        let found = unsafe { libc::dlvsym(libc::RTLD_DEFAULT, SYMBOL.as_ptr(), VERSION.as_ptr()) };
        !found.is_null()
    }
    #[cfg(not(target_env = "gnu"))]
    true
}

/// PERSISTENT RESERVE IN through the library; returns the result code and
/// the reply (meaningful on success). READ KEYS, READ RESERVATION and
/// REPORT CAPABILITIES only: any other service action is refused here, as
/// MPATH_PR_SYNTAX_ERROR, without calling the library (READ FULL STATUS is
/// served with SG_IO, D14).
pub fn reserve_in(
    fd: BorrowedFd<'_>,
    service_action: u8,
    noisy: bool,
    verbose: u8,
) -> (i32, PrinReply) {
    use super::translate::{code, sa_in};
    let empty = PrinReply::Keys {
        generation: 0,
        additional_length: 0,
        body: Vec::new(),
    };
    if !matches!(
        service_action,
        sa_in::READ_KEYS | sa_in::READ_RESERVATION | sa_in::REPORT_CAPABILITIES
    ) {
        return (code::SYNTAX_ERROR, empty);
    }
    let mut buf = zeroed_words(std::mem::size_of::<PrinResp>());
    let resp = buf.as_mut_ptr().cast::<PrinResp>();
    // SAFETY: `resp` points to a zeroed, 8-byte aligned buffer of
    // `sizeof(struct prin_resp)` bytes, all the library writes for READ
    // KEYS, READ RESERVATION (at most MPATH_MAX_PARAM_LEN bytes of keys)
    // and REPORT CAPABILITIES, the only service actions let through above.
    // `fd` is open for the duration of the call.
    let rc = unsafe {
        mpath_persistent_reserve_in(
            fd.as_raw_fd(),
            c_int::from(service_action),
            resp,
            c_int::from(noisy),
            c_int::from(verbose),
        )
    };
    // SAFETY: the buffer holds an initialised `PrinResp` (zeroed, then
    // filled by the library); every field is plain bytes/integers, so any
    // bit pattern is valid for the layout read below.
    let reply = unsafe {
        if service_action == sa_in::REPORT_CAPABILITIES {
            let c = (*resp).readcap;
            PrinReply::Capabilities {
                length: c.length,
                flags: c.flags,
                type_mask: c.pr_type_mask,
            }
        } else {
            let k = &(*resp).readkeys;
            PrinReply::Keys {
                generation: k.prgeneration,
                additional_length: k.additional_length,
                body: k.key_list.to_vec(),
            }
        }
    };
    (rc, reply)
}

/// PERSISTENT RESERVE OUT through the library; returns its result code.
pub fn reserve_out(fd: BorrowedFd<'_>, request: &ProutRequest, noisy: bool, verbose: u8) -> i32 {
    let count = request.transport_ids.len().min(MAX_TRANSPORT_IDS);
    let mut buf = zeroed_words(
        std::mem::size_of::<ProutParamDescriptor>()
            + MAX_TRANSPORT_IDS * std::mem::size_of::<usize>(),
    );
    let mut tids: Vec<Transportid> = request
        .transport_ids
        .iter()
        .take(count)
        .map(|t| {
            let mut c = Transportid {
                format_code: 0,
                protocol_id: 0,
                name: [0; TID_NAME_LEN],
            };
            let (format, protocol, bytes): (u8, u8, &[u8]) = match t {
                TransportId::Fc {
                    format,
                    n_port_name,
                } => (*format, 0x00, n_port_name),
                TransportId::Iscsi {
                    format,
                    length_and_name,
                } => (*format, 0x05, length_and_name),
                TransportId::Sas {
                    format,
                    sas_address,
                } => (*format, 0x06, sas_address),
            };
            c.format_code = format;
            c.protocol_id = protocol;
            let n = bytes.len().min(TID_NAME_LEN);
            c.name[..n].copy_from_slice(&bytes[..n]);
            c
        })
        .collect();
    let paramp = buf.as_mut_ptr().cast::<ProutParamDescriptor>();
    // SAFETY: `paramp` points to a zeroed, 8-byte aligned buffer with room
    // for the descriptor plus MAX_TRANSPORT_IDS pointers after it, and
    // `count` <= MAX_TRANSPORT_IDS pointers are written there, each to an
    // element of `tids`, which outlives the library call below. All fields
    // written are plain integers/bytes.
    unsafe {
        (*paramp).key = request.key;
        (*paramp).sa_key = request.sa_key;
        (*paramp).sa_flags = request.flags;
        (*paramp).num_transportid = count as u32;
        let list = std::ptr::addr_of_mut!((*paramp).trnptid_list).cast::<*mut Transportid>();
        for (i, tid) in tids.iter_mut().enumerate() {
            *list.add(i) = tid as *mut Transportid;
        }
    }
    // SAFETY: `paramp` is a valid, fully initialised descriptor as above;
    // `fd` is open for the duration of the call.
    unsafe {
        mpath_persistent_reserve_out(
            fd.as_raw_fd(),
            c_int::from(request.service_action),
            c_int::from(request.scope),
            c_uint::from(request.pr_type),
            paramp,
            c_int::from(noisy),
            c_int::from(verbose),
        )
    }
}
