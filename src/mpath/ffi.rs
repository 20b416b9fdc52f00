//! The libmpathpersist binding: hand-written declarations of the parts of
//! `mpath_persist.h` pr-helper uses. Every struct is `#[repr(C)]` with the
//! header's field order; `layout()` reports sizes and offsets so that a test
//! (tests/mpath_layout.rs) can compare them with a C program compiled
//! against the real header.
//!
//! All `unsafe` of the multipath support is in this file.

use std::os::fd::{AsRawFd, BorrowedFd};

use libc::{c_int, c_uint};

use super::translate::{FullDescriptor, PrinReply, ProutRequest, TransportId, MAX_TRANSPORT_IDS};

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

#[repr(C)]
#[derive(Clone, Copy)]
struct PrinFulldescr {
    key: [u8; 8],
    flag: u8,
    scope_type: u8,
    rtpi: u16,
    trnptid: Transportid,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct PrintFulldescrList {
    prgeneration: u32,
    number_of_descriptor: u32,
    private_buffer: [u8; MAX_PARAM_LEN],
    // Followed by `struct prin_fulldescr *descriptors[]`.
    descriptors: [*mut PrinFulldescr; 0],
}

/// `struct prin_resp` (a union of the four reply layouts; the READ
/// RESERVATION layout overlays READ KEYS, so it is read through that one).
#[repr(C)]
union PrinResp {
    readkeys: PrinReaddescr,
    readcap: PrinCapdescr,
    readfd: PrintFulldescrList,
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
        ("sizeof(struct prin_fulldescr)", size_of::<PrinFulldescr>()),
        (
            "offsetof(struct prin_fulldescr, rtpi)",
            offset_of!(PrinFulldescr, rtpi),
        ),
        (
            "offsetof(struct prin_fulldescr, trnptid)",
            offset_of!(PrinFulldescr, trnptid),
        ),
        (
            "sizeof(struct print_fulldescr_list)",
            size_of::<PrintFulldescrList>(),
        ),
        (
            "offsetof(struct print_fulldescr_list, descriptors)",
            offset_of!(PrintFulldescrList, descriptors),
        ),
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

/// Initialises the library (udev, /etc/multipath.conf) and sets the
/// allocation length it uses for its own PR IN commands to 8192, as the
/// reference does. Call once, single-threaded.
pub fn init() -> Result<(), String> {
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
        return Err(format!("libmpathpersist_init() failed ({rc}): check /etc/multipath.conf and that udev is available"));
    }
    Ok(())
}

/// PERSISTENT RESERVE IN through the library; returns the result code and
/// the reply (meaningful on success).
pub fn reserve_in(
    fd: BorrowedFd<'_>,
    service_action: u8,
    noisy: bool,
    verbose: u8,
) -> (i32, PrinReply) {
    // Room for the union plus the descriptor pointer array the library
    // appends after READ FULL STATUS (one per 24 bytes of data at most).
    let pointers = MAX_PARAM_LEN / 24;
    let mut buf =
        zeroed_words(std::mem::size_of::<PrinResp>() + pointers * std::mem::size_of::<usize>());
    let resp = buf.as_mut_ptr().cast::<PrinResp>();
    // SAFETY: `resp` points to a zeroed, 8-byte aligned buffer larger than
    // `struct prin_resp` by room for `pointers` descriptor pointers, which is
    // where the library writes them for READ FULL STATUS (it writes at most
    // one per decoded descriptor, and descriptors are at least 24 bytes of
    // an 8192-byte reply). `fd` is open for the duration of the call.
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
        match service_action {
            super::translate::sa_in::REPORT_CAPABILITIES => {
                let c = (*resp).readcap;
                PrinReply::Capabilities {
                    length: c.length,
                    flags: c.flags,
                    type_mask: c.pr_type_mask,
                }
            }
            super::translate::sa_in::READ_FULL_STATUS => {
                let fd_list = &(*resp).readfd;
                let count = (fd_list.number_of_descriptor as usize).min(pointers);
                let list = fd_list.descriptors.as_ptr();
                let mut descriptors = Vec::with_capacity(count);
                if rc == 0 {
                    for i in 0..count {
                        let p = *list.add(i);
                        if p.is_null() {
                            break;
                        }
                        let d = *p;
                        descriptors.push(FullDescriptor {
                            key: d.key,
                            flags: d.flag,
                            scope_type: d.scope_type,
                            relative_target_port: d.rtpi,
                            format_code: d.trnptid.format_code,
                            protocol_id: d.trnptid.protocol_id,
                            name: d.trnptid.name.to_vec(),
                        });
                    }
                }
                PrinReply::FullStatus {
                    generation: fd_list.prgeneration,
                    descriptors,
                }
            }
            _ => {
                let k = &(*resp).readkeys;
                PrinReply::Keys {
                    generation: k.prgeneration,
                    additional_length: k.additional_length,
                    body: k.key_list.to_vec(),
                }
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
