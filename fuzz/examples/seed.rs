//! Writes the seed corpus: `fuzz/corpus/<target>/<name>`, one file per case,
//! with the shapes of `tests/protocol.rs` and the tables of `src/scsi`.
//!
//! Run: `fuzz/seed.sh` (or `cargo run --example seed` in `fuzz/`, with an
//! optional output directory). Existing seed files of the three targets are
//! replaced, so the result is the same every time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fuzz_support::decoder::{self, Chunk};
use fuzz_support::mpath::{self, reply_kind, BuiltPrOut};
use fuzz_support::{handshake, scsi};
use pr_helper::scsi::pr::{self, pr_in_cdb, pr_out_cdb};
use pr_helper::scsi::{host, SenseCode};

type Corpus = BTreeMap<String, Vec<u8>>;

fn decoder_seeds() -> Corpus {
    let mut c = Corpus::new();
    let mut add = |name: &str, chunks: Vec<Chunk>| {
        assert!(
            c.insert(name.to_string(), decoder::encode(&chunks))
                .is_none(),
            "{name}"
        );
    };
    let params = [0u8; 24];
    let in8 = pr_in_cdb(0, 8);
    let out24 = pr_out_cdb(0, 0, 0, 24);

    // Valid requests.
    add("pr-in-read-keys", vec![Chunk::new(&in8, 1)]);
    add(
        "pr-in-read-reservation-8192",
        vec![Chunk::new(&pr_in_cdb(1, 8192), 1)],
    );
    for alloc in [0u16, 1, 4096] {
        add(
            &format!("pr-in-alloc-{alloc}"),
            vec![Chunk::new(&pr_in_cdb(0, alloc), 1)],
        );
    }
    add(
        "pr-out-register",
        vec![Chunk::new(&out24, 1), Chunk::new(&params, 0)],
    );
    add(
        "pr-out-one-message",
        vec![Chunk::new(&[&out24[..], &params].concat(), 1)],
    );
    add(
        "pr-out-zero-length",
        vec![Chunk::new(&pr_out_cdb(3, 0, 0, 0), 1)],
    );
    add(
        "pr-out-8192",
        vec![
            Chunk::new(&pr_out_cdb(0, 0, 0, 8192), 1),
            Chunk::new(&[0x5a; 8192], 0),
        ],
    );
    let mut framing = out24;
    framing[5] = 0xff;
    framing[6] = 0xff;
    add(
        "pr-out-bytes-5-6-ignored",
        vec![Chunk::new(&framing, 1), Chunk::new(&params, 0)],
    );
    let mut split = vec![Chunk::new(&out24, 1)];
    split.extend(params.chunks(5).map(|p| Chunk::new(p, 0)));
    add("pr-out-params-in-5-byte-writes", split);
    for len in [8usize, 23] {
        add(
            &format!("pr-out-short-list-{len}"),
            vec![
                Chunk::new(&pr_out_cdb(0, 0, 0, len as u32), 1),
                Chunk::new(&params[..len], 0),
            ],
        );
    }
    add(
        "pipelined-three",
        vec![
            Chunk::new(&out24, 1),
            Chunk::new(&params, 0),
            Chunk::new(&pr_in_cdb(0, 16), 1),
            Chunk::new(&out24, 1),
            Chunk::new(&params, 0),
        ],
    );

    // Split CDBs, the fd on each chunk.
    for split in [&[1usize, 15][..], &[4, 4, 8], &[2, 2, 2, 10], &[1, 8, 7]] {
        for fd_chunk in 0..split.len() {
            let mut at = 0;
            let chunks = split
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let c = Chunk::new(&in8[at..at + len], usize::from(i == fd_chunk));
                    at += len;
                    c
                })
                .collect();
            let name = split
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("-");
            add(&format!("split-cdb-{name}-fd-on-{fd_chunk}"), chunks);
        }
    }
    add(
        "fd-on-second-request-chunk",
        vec![
            Chunk::new(&in8, 1),
            Chunk::new(&in8[..3], 0),
            Chunk::new(&in8[3..], 1),
        ],
    );

    // fd counts and placement.
    add("no-fd", vec![Chunk::new(&in8, 0)]);
    add("two-fds", vec![Chunk::new(&in8, 2)]);
    add(
        "fds-on-two-chunks",
        vec![Chunk::new(&in8[..4], 1), Chunk::new(&in8[4..], 1)],
    );
    add("seventeen-fds-truncated", vec![Chunk::new(&in8, 17)]);
    // Issue 12 item 4: fds on chunks of a CDB that never completes. The
    // second fd ends the request at once; nothing waits for byte 16.
    add(
        "fds-on-two-one-byte-chunks-cdb-never-completes",
        vec![Chunk::new(&in8[..1], 1), Chunk::new(&in8[1..2], 1)],
    );
    add(
        "violation-fifteen-one-byte-chunks-sixteen-fds-each",
        (0..15).map(|i| Chunk::new(&in8[i..i + 1], 16)).collect(),
    );
    add(
        "violation-second-fd-on-last-byte-then-new-connection",
        vec![
            Chunk::new(&in8[..15], 1),
            Chunk::new(&in8[15..], 1),
            Chunk::new(&in8, 1).after_reconnect(),
        ],
    );
    add("twenty-one-fds", vec![Chunk::new(&in8, 21)]);
    add(
        "fd-with-params-discarded-next-has-none",
        vec![Chunk::new(&out24, 0), Chunk::new(&params, 1)],
    );
    add(
        "extra-fd-on-params-discarded",
        vec![
            Chunk::new(&out24, 1),
            Chunk::new(&params, 1),
            Chunk::new(&in8, 1),
        ],
    );
    add(
        "params-tail-and-next-cdb-share-fd",
        vec![
            Chunk::new(&out24, 1),
            Chunk::new(&[&params[..], &in8].concat(), 1),
        ],
    );
    add(
        "empty-write-with-fd",
        vec![Chunk::new(&[], 1), Chunk::new(&in8, 1)],
    );

    // Bad opcodes and lengths (check order: fds, opcode, length).
    for op in [0x00u8, 0x12, 0x5d, 0x60, 0xde, 0xff] {
        let mut bad = in8;
        bad[0] = op;
        add(&format!("bad-opcode-{op:02x}"), vec![Chunk::new(&bad, 1)]);
    }
    let mut bad = pr_in_cdb(0, 9000);
    bad[0] = 0;
    add("bad-opcode-and-too-long", vec![Chunk::new(&bad, 1)]);
    let mut bad = in8;
    bad[0] = 0x12;
    add("bad-opcode-no-fd", vec![Chunk::new(&bad, 0)]);
    for len in [8193u16, 0xffff] {
        add(
            &format!("pr-in-too-long-{len}"),
            vec![Chunk::new(&pr_in_cdb(0, len), 1)],
        );
        let cdb = pr_out_cdb(0, 0, 0, u32::from(len));
        add(&format!("pr-out-too-long-{len}"), vec![Chunk::new(&cdb, 1)]);
    }

    // The client goes away mid-request, then comes back.
    add(
        "eof-mid-cdb",
        vec![
            Chunk::new(&in8[..7], 1),
            Chunk::new(&in8, 1).after_reconnect(),
        ],
    );
    add(
        "eof-mid-params",
        vec![
            Chunk::new(&out24, 1),
            Chunk::new(&params[..10], 0),
            Chunk::new(&in8, 1).after_reconnect(),
        ],
    );
    add(
        "violation-then-new-connection",
        vec![Chunk::new(&in8, 0), Chunk::new(&in8, 1).after_reconnect()],
    );
    c
}

fn handshake_seeds() -> Corpus {
    let mut c = Corpus::new();
    let zero = [0u8; 96];
    let cc = |code: SenseCode| code.fixed_buffer();
    let mut add = |name: &str, input: Vec<u8>| {
        assert!(c.insert(name.to_string(), input).is_none(), "{name}");
    };
    add(
        "features-0-check-condition-io-error",
        handshake::encode(0, 0, 2, &cc(SenseCode::IO_ERROR), &[]),
    );
    add("features-1", handshake::encode(1, 0, 0, &zero, &[]));
    add(
        "features-high-bit",
        handshake::encode(0x8000_0000, 0, 0, &zero, &[]),
    );
    add(
        "features-all",
        handshake::encode(u32::MAX, 0, 0, &zero, &[]),
    );
    add(
        "invalid-opcode",
        handshake::encode(0, 3, 2, &cc(SenseCode::INVALID_OPCODE), &[]),
    );
    add(
        "reservation-conflict",
        handshake::encode(0, 0, 0x18, &zero, &[]),
    );
    add(
        "good-read-keys-8",
        handshake::encode(0, 1, 0, &zero, &[0, 0, 0, 1, 0, 0, 0, 0]),
    );
    let mut keys = vec![0u8; 24];
    keys[3] = 2;
    keys[7] = 16;
    keys[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
    keys[16..24].copy_from_slice(&0x99aa_bbcc_ddee_ff00u64.to_be_bytes());
    add(
        "good-read-keys-two",
        handshake::encode(0, 0, 0, &zero, &keys),
    );
    add(
        "good-8192",
        handshake::encode(0, 7, 0, &zero, &[0xee; 8192]),
    );
    let mut device = [0u8; 96];
    device[..24].fill(0xee);
    add(
        "device-sense-past-18",
        handshake::encode(0, 0, 2, &device, &[]),
    );
    c
}

fn scsi_seeds() -> Corpus {
    let mut c = Corpus::new();
    let base = scsi::Input {
        errno: None,
        status: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        dxfer_len: 8192,
        sense: [0; 96],
        rest: Vec::new(),
    };
    let mut add = |name: &str, input: scsi::Input| {
        assert!(
            c.insert(name.to_string(), input.encode()).is_none(),
            "{name}"
        );
    };
    // Every row of the errno table, and a few that fall to the default.
    for (name, errno) in [
        ("ENOTTY", libc::ENOTTY),
        ("EDOM", libc::EDOM),
        ("ENODEV", libc::ENODEV),
        ("EREMOTEIO", libc::EREMOTEIO),
        ("EBADE", libc::EBADE),
        ("ENODATA", libc::ENODATA),
        ("ENOMEDIUM", libc::ENOMEDIUM),
        ("ENOMEM", libc::ENOMEM),
        ("EINVAL", libc::EINVAL),
        ("ENOSPC", libc::ENOSPC),
        ("EIO", libc::EIO),
        ("EPERM", libc::EPERM),
    ] {
        add(
            &format!("errno-{name}"),
            scsi::Input {
                errno: Some(errno),
                ..base.clone()
            },
        );
    }
    // Every listed host status, D3's retryable ones, and unlisted ones.
    let mut device = [0u8; 96];
    device[..24].fill(0xee);
    for hs in [
        host::NO_CONNECT,
        host::BUS_BUSY,
        host::TIME_OUT,
        host::BAD_TARGET,
        host::ABORT,
        host::RESET,
        host::SOFT_ERROR,
        host::IMM_RETRY,
        host::REQUEUE,
        host::TRANSPORT_DISRUPTED,
        host::TARGET_FAILURE,
        host::NEXUS_FAILURE,
        host::ALLOC_FAILURE,
        host::MEDIUM_ERROR,
        0x07,
        0x0f,
        0xffff,
    ] {
        add(
            &format!("host-{hs:#06x}"),
            scsi::Input {
                host_status: hs,
                sense: device,
                ..base.clone()
            },
        );
    }
    for driver in [2u16, 4, 6, 7, 8] {
        add(
            &format!("driver-{driver}"),
            scsi::Input {
                status: 0x18,
                driver_status: driver,
                ..base.clone()
            },
        );
    }
    // Device status as returned, with data counts.
    for (name, resid) in [
        ("good-24-bytes", 8192 - 24),
        ("good-resid-negative", -5),
        ("good-resid-all", 8192),
    ] {
        add(
            name,
            scsi::Input {
                resid,
                ..base.clone()
            },
        );
    }
    add(
        "good-resid-over",
        scsi::Input {
            resid: 9000,
            dxfer_len: 24,
            ..base.clone()
        },
    );
    add(
        "reservation-conflict",
        scsi::Input {
            status: 0x18,
            ..base.clone()
        },
    );
    let mut fixed = SenseCode::RESET.fixed_buffer();
    fixed[20] = 0xab;
    add(
        "check-condition-fixed-sense",
        scsi::Input {
            status: 2,
            sense: fixed,
            rest: fixed[..18].to_vec(),
            ..base.clone()
        },
    );
    let mut desc = [0u8; 96];
    desc[..8].copy_from_slice(&[0x72, 0x06, 0x2a, 0x03, 0, 0, 0, 0]);
    add(
        "check-condition-descriptor-sense",
        scsi::Input {
            status: 2,
            sense: desc,
            rest: desc[..8].to_vec(),
            ..base.clone()
        },
    );
    add(
        "parse-short-fixed",
        scsi::Input {
            rest: vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20],
            ..base.clone()
        },
    );
    add(
        "parse-short-descriptor",
        scsi::Input {
            rest: vec![0xf3, 0xff, 1],
            ..base.clone()
        },
    );
    add(
        "parse-deferred-fixed",
        scsi::Input {
            rest: vec![0xf1, 0, 0xff, 0, 0, 0, 0, 10, 0, 0, 0, 0, 1, 2],
            ..base
        },
    );
    c
}

fn mpath_seeds() -> Corpus {
    let mut c = Corpus::new();
    let mut add = |name: &str, input: Vec<u8>| {
        assert!(c.insert(name.to_string(), input).is_none(), "{name}");
    };
    // Raw PR OUT: the CDB, then the parameter list as a guest sends it.
    let raw = |sa: u8, list: &[u8]| {
        let mut v = vec![mpath::MODE_RAW_PR_OUT];
        v.extend_from_slice(&pr_out_cdb(sa, 0, 5, list.len() as u32));
        v.extend_from_slice(list);
        v
    };
    let with_tids = |tids: Vec<Vec<u8>>| {
        pr::ParamList {
            key: 0x1234,
            sa_key: 0x5678,
            flags: pr::flags::SPEC_I_PT,
            transport_ids: tids,
        }
        .encode()
    };
    let fixed = with_tids(vec![]);
    add("raw-register-fixed-24", raw(0, &fixed[..24]));
    add("raw-short-23", raw(0, &fixed[..23]));
    add("raw-no-room-for-length-26", raw(0, &fixed[..26]));
    add("raw-register-and-move", raw(7, &fixed[..24]));
    add(
        "raw-fc",
        raw(
            0,
            &with_tids(vec![pr::fc_transport_id(0x2100_0024_ff00_0001)]),
        ),
    );
    add(
        "raw-sas",
        raw(
            0,
            &with_tids(vec![pr::sas_transport_id(0x5001_405b_0000_0001)]),
        ),
    );
    let iscsi = pr::iscsi_transport_id("iqn.2026-01.org.example:vm1");
    let mut iscsi_port = pr::iscsi_transport_id("iqn.2026-01.org.example:vm1,i,0x1");
    iscsi_port[0] |= 0x40;
    add(
        "raw-iscsi-both-formats",
        raw(0, &with_tids(vec![iscsi, iscsi_port])),
    );
    let sas33: Vec<Vec<u8>> = (0..33).map(pr::sas_transport_id).collect();
    add("raw-33-sas", raw(0, &with_tids(sas33)));
    let mut over = with_tids(vec![pr::sas_transport_id(1)]);
    over[27] += 1;
    add("raw-declared-length-over", raw(0, &over));

    // Built PR OUT lists: (kind: 0 FC, 1 SAS, 2 iSCSI, +0x80 format 01;
    // value; iSCSI name length), fault.
    let mixed = |n: usize| -> Vec<(u8, u64, u8)> {
        (0..n)
            .map(|i| {
                (
                    (i % 3) as u8 | if i % 2 == 1 { 0x80 } else { 0 },
                    i as u64 * 0x0101,
                    (i * 7) as u8,
                )
            })
            .collect()
    };
    for n in [0, 1, 3, 32, 33, 40] {
        add(
            &format!("built-{n}-ids"),
            BuiltPrOut::encode_input(0, 0xabcd, &mixed(n), 0),
        );
    }
    for (fault, name) in [
        (1, "length-over"),
        (2, "unknown-protocol"),
        (3, "iscsi-odd-length"),
        (4, "iscsi-no-nul"),
        (5, "iscsi-too-long"),
    ] {
        add(
            &format!("built-fault-{name}"),
            BuiltPrOut::encode_input(0, 1, &mixed(3), fault),
        );
    }
    add("built-sa-8", BuiltPrOut::encode_input(8, 1, &mixed(2), 0));

    // PR IN replies: mode, alloc, kind, fields.
    let reply = |alloc: u16, kind: u8, fields: &[u8]| {
        let mut v = vec![mpath::MODE_PR_IN_REPLY];
        v.extend_from_slice(&alloc.to_be_bytes());
        v.push(kind);
        v.extend_from_slice(fields);
        v
    };
    let mut keys = vec![0, 0, 0, 7, 0, 0, 0, 16];
    keys.extend_from_slice(&[0x11; 8]);
    keys.extend_from_slice(&[0x22; 8]);
    for alloc in [0u16, 8, 12, 24, 8192, 65535] {
        add(
            &format!("keys-alloc-{alloc}"),
            reply(alloc, reply_kind::KEYS, &keys),
        );
    }
    add(
        "keys-additional-length-huge",
        reply(
            8192,
            reply_kind::KEYS,
            &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xf8, 0x33, 0x33],
        ),
    );
    add(
        "capabilities",
        reply(8, reply_kind::CAPABILITIES, &[0, 8, 0x01, 0x81, 0xea, 0x01]),
    );
    // Library results (first four bytes, big-endian; mode 0 with a short
    // input is an empty PR OUT).
    for result in [-1i32, 0, 1, 2, 5, 6, 7, 8, 9, 11, 15, 16] {
        add(
            &format!("map-result-{result}"),
            result.to_be_bytes().to_vec(),
        );
    }
    // parse_pr_in on byte 1 (mode 2 keeps it out of the PR OUT paths).
    for sa in [0u8, 3, 4, 0x21] {
        add(&format!("pr-in-sa-{sa:02x}"), vec![2, sa]);
    }
    c
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut total = 0;
    for (target, corpus) in [
        ("decoder", decoder_seeds()),
        ("handshake_and_response", handshake_seeds()),
        ("scsi", scsi_seeds()),
        ("mpath_translate", mpath_seeds()),
    ] {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        for (name, bytes) in &corpus {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
        println!("{}: {} seeds", dir.display(), corpus.len());
        total += corpus.len();
    }
    assert!(
        total < 300,
        "keep the committed corpus small ({total} files)"
    );
}
