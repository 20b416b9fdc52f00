//! Persistent-reservation scenarios on a real LIO logical unit with two
//! initiators (A = 0, B = 1).
//!
//! Each scenario is a script of steps. It runs three times, each on a fresh
//! LUN: through pr-helper, through qemu-pr-helper, and directly with sg_raw.
//! Transcripts must match: pr-helper and qemu-pr-helper byte for byte
//! (status, all 96 sense bytes, data), pr-helper and the device itself in
//! status, sense and data. Steps carry expectations (from SPC-4 and LIO),
//! checked on every run, and `Check` steps compare the state read through
//! the helper with `sg_persist` run directly on the device.

use std::path::PathBuf;

use pr_helper::scsi::pr::{
    self, flags, pr_in_cdb, pr_out_cdb, pr_type, sa_in, sa_out, MoveParamList, ParamList,
};

use crate::exec::{self, hex, Outcome, Via};
use crate::lio::{self, INITIATOR_SAS};

/// Which device node of a LUN the commands go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// /dev/sdX
    Block,
    /// /dev/sgN
    Sg,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Block => "sd",
            Kind::Sg => "sg",
        }
    }
}

/// What a step should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever the device says (still compared between the three runs).
    Any,
    /// GOOD.
    Good,
    /// This status, any sense.
    Status(u8),
    /// CHECK CONDITION with this key/ASC/ASCQ.
    Sense(u8, u8, u8),
}

/// One step.
#[derive(Debug, Clone)]
pub enum Op {
    /// PERSISTENT RESERVE IN from initiator `who`.
    In { who: usize, sa: u8, alloc: u16 },
    /// PERSISTENT RESERVE OUT from `who`; `read_only` opens the fd O_RDONLY
    /// (helper runs only: the check is the helper's).
    Out {
        who: usize,
        sa: u8,
        ty: u8,
        params: Vec<u8>,
        read_only: bool,
    },
    /// WRITE(10) of one block directly from `who` (never through a helper).
    Write { who: usize },
    /// TEST UNIT READY directly from `who` (clears a pending unit attention,
    /// as fence_scsi does before every step).
    Tur { who: usize },
    /// State from `who`: READ KEYS and READ RESERVATION through the run's
    /// path, compared with sg_persist on the device.
    Check { who: usize },
}

/// A labelled step with its expectation.
#[derive(Debug, Clone)]
pub struct Step {
    label: String,
    op: Op,
    expect: Expect,
}

/// A named script.
pub struct Script {
    /// Name in result lines.
    pub name: String,
    /// Steps.
    pub steps: Vec<Step>,
}

fn step(label: impl Into<String>, op: Op, expect: Expect) -> Step {
    Step {
        label: label.into(),
        op,
        expect,
    }
}

fn params(key: u64, sa_key: u64) -> Vec<u8> {
    ParamList {
        key,
        sa_key,
        ..Default::default()
    }
    .encode()
}

fn out(who: usize, sa: u8, ty: u8, params: Vec<u8>) -> Op {
    Op::Out {
        who,
        sa,
        ty,
        params,
        read_only: false,
    }
}

fn register(who: usize, old: u64, new: u64, e: Expect) -> Step {
    step(
        format!("{}: REGISTER {old:#x}->{new:#x}", n(who)),
        out(who, sa_out::REGISTER, 0, params(old, new)),
        e,
    )
}

fn register_ignore(who: usize, new: u64, e: Expect) -> Step {
    step(
        format!("{}: REGISTER AND IGNORE {new:#x}", n(who)),
        out(who, sa_out::REGISTER_AND_IGNORE, 0, params(0, new)),
        e,
    )
}

fn reserve(who: usize, key: u64, ty: u8, e: Expect) -> Step {
    step(
        format!("{}: RESERVE {key:#x} type {ty}", n(who)),
        out(who, sa_out::RESERVE, ty, params(key, 0)),
        e,
    )
}

fn release(who: usize, key: u64, ty: u8, e: Expect) -> Step {
    step(
        format!("{}: RELEASE {key:#x} type {ty}", n(who)),
        out(who, sa_out::RELEASE, ty, params(key, 0)),
        e,
    )
}

fn clear(who: usize, key: u64, e: Expect) -> Step {
    step(
        format!("{}: CLEAR {key:#x}", n(who)),
        out(who, sa_out::CLEAR, 0, params(key, 0)),
        e,
    )
}

fn preempt(who: usize, key: u64, victim: u64, ty: u8, e: Expect) -> Step {
    step(
        format!("{}: PREEMPT {victim:#x} with {key:#x} type {ty}", n(who)),
        out(who, sa_out::PREEMPT, ty, params(key, victim)),
        e,
    )
}

fn preempt_abort(who: usize, key: u64, victim: u64, ty: u8, e: Expect) -> Step {
    step(
        format!(
            "{}: PREEMPT AND ABORT {victim:#x} with {key:#x} type {ty}",
            n(who)
        ),
        out(who, sa_out::PREEMPT_AND_ABORT, ty, params(key, victim)),
        e,
    )
}

fn read(who: usize, sa: u8, alloc: u16, e: Expect) -> Step {
    let what = [
        "READ KEYS",
        "READ RESERVATION",
        "REPORT CAPABILITIES",
        "READ FULL STATUS",
    ]
    .get(usize::from(sa))
    .copied()
    .unwrap_or("PR IN");
    step(
        format!("{}: {what} (alloc {alloc}, SA {sa})", n(who)),
        Op::In { who, sa, alloc },
        e,
    )
}

fn write(who: usize, e: Expect) -> Step {
    step(format!("{}: WRITE(10)", n(who)), Op::Write { who }, e)
}

fn check(who: usize) -> Step {
    step(
        format!("{}: state check", n(who)),
        Op::Check { who },
        Expect::Good,
    )
}

fn tur(who: usize) -> Step {
    step(
        format!("{}: TEST UNIT READY", n(who)),
        Op::Tur { who },
        Expect::Any,
    )
}

fn n(who: usize) -> &'static str {
    ["A", "B"][who]
}

const CONFLICT: Expect = Expect::Status(0x18);
const A: usize = 0;
const B: usize = 1;
const KA: u64 = 0xa1a1_0000_0000_00a1;
const KB: u64 = 0xb1b1_0000_0000_00b1;

/// Every scenario.
pub fn all() -> Vec<Script> {
    let mut scripts = vec![
        pr_in_lengths(),
        register_variants(),
        clear_and_preempt(),
        preempt_abort_errors(),
    ];
    for ty in [1, 3, 5, 6, 7, 8] {
        scripts.push(reservation_type(ty));
    }
    scripts.extend([
        register_and_move(),
        fence_scsi(),
        windows_cluster(),
        migrate_pr(),
        errors(),
    ]);
    scripts
}

/// Every PR IN service action at allocation lengths 0, 8, exact, more than
/// needed and 8192, from both initiators.
fn pr_in_lengths() -> Script {
    let mut steps = vec![
        register_ignore(A, KA, Expect::Good),
        register_ignore(B, KB, Expect::Good),
        reserve(
            A,
            KA,
            pr_type::WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            Expect::Good,
        ),
        check(A),
        check(B),
    ];
    // Exact lengths for this state: 2 keys; 1 reservation; 8-byte
    // capabilities; 2 full-status descriptors of 24 + 24-byte SAS TransportID.
    for (sa, exact) in [
        (sa_in::READ_KEYS, 24u16),
        (sa_in::READ_RESERVATION, 24),
        (sa_in::REPORT_CAPABILITIES, 8),
        (sa_in::READ_FULL_STATUS, 8 + 2 * 48),
    ] {
        for alloc in [0, 1, 8, exact - 1, exact, exact + 100, 8192] {
            // LIO refuses allocation lengths below the 8-byte header, except
            // for REPORT CAPABILITIES, which it answers truncated.
            let e = match (sa, alloc) {
                (sa_in::REPORT_CAPABILITIES, 0..=7) => Expect::Any,
                (_, 0..=7) => Expect::Sense(5, 0x24, 0),
                _ => Expect::Good,
            };
            steps.push(read(A, sa, alloc, e));
        }
        steps.push(read(B, sa, exact, Expect::Good));
    }
    for sa in [4u8, 0x1f] {
        steps.push(read(A, sa, 64, Expect::Sense(5, 0x24, 0)));
    }
    Script {
        name: "pr-in-lengths".into(),
        steps,
    }
}

fn flagged(key: u64, sa_key: u64, f: u8, tids: Vec<Vec<u8>>) -> Vec<u8> {
    ParamList {
        key,
        sa_key,
        flags: f,
        transport_ids: tids,
    }
    .encode()
}

/// REGISTER in its forms: new, wrong key, key change, ignore-existing,
/// unregister, APTPL, ALL_TG_PT, SPEC_I_PT with TransportIDs, short lists.
fn register_variants() -> Script {
    let steps = vec![
        register(A, 0, KA, Expect::Good),
        register(A, 0x99, 0xa2, CONFLICT),
        register(A, KA, 0xa2, Expect::Good),
        check(A),
        register_ignore(A, 0xa3, Expect::Good),
        check(A),
        register(A, 0xa3, 0, Expect::Good),
        check(A),
        step(
            "A: REGISTER with APTPL",
            out(A, sa_out::REGISTER, 0, flagged(0, KA, flags::APTPL, vec![])),
            Expect::Good,
        ),
        read(A, sa_in::REPORT_CAPABILITIES, 8, Expect::Good),
        check(A),
        step(
            "A: REGISTER AND IGNORE with ALL_TG_PT",
            out(
                A,
                sa_out::REGISTER_AND_IGNORE,
                0,
                flagged(0, 0xa4, flags::ALL_TG_PT, vec![]),
            ),
            Expect::Any,
        ),
        read(A, sa_in::READ_FULL_STATUS, 8192, Expect::Good),
        register_ignore(A, 0, Expect::Good),
        step(
            "A: REGISTER with SPEC_I_PT for B (SAS TransportID)",
            out(
                A,
                sa_out::REGISTER,
                0,
                flagged(
                    0,
                    0xc1,
                    flags::SPEC_I_PT,
                    vec![pr::sas_transport_id(INITIATOR_SAS[B])],
                ),
            ),
            Expect::Good,
        ),
        read(A, sa_in::READ_FULL_STATUS, 8192, Expect::Good),
        check(A),
        check(B),
        register(A, 0xc1, 0, Expect::Good),
        register(B, 0xc1, 0, Expect::Good),
        step(
            "A: REGISTER with SPEC_I_PT for an unknown initiator",
            out(
                A,
                sa_out::REGISTER,
                0,
                flagged(
                    0,
                    0xc2,
                    flags::SPEC_I_PT,
                    vec![pr::sas_transport_id(0x5001405ccccccccc)],
                ),
            ),
            Expect::Any,
        ),
        step(
            "A: REGISTER with SPEC_I_PT and an iSCSI TransportID",
            out(
                A,
                sa_out::REGISTER,
                0,
                flagged(
                    0,
                    0xc3,
                    flags::SPEC_I_PT,
                    vec![pr::iscsi_transport_id("iqn.2026-11.org.example:node")],
                ),
            ),
            Expect::Any,
        ),
        step(
            "A: REGISTER with SPEC_I_PT and a short TransportID list",
            out(A, sa_out::REGISTER, 0, {
                let mut p = flagged(
                    0,
                    0xc4,
                    flags::SPEC_I_PT,
                    vec![pr::sas_transport_id(INITIATOR_SAS[B])],
                );
                p.truncate(p.len() - 4);
                p
            }),
            Expect::Any,
        ),
        step(
            "A: REGISTER with an empty list",
            out(A, sa_out::REGISTER, 0, vec![]),
            Expect::Any,
        ),
        step(
            "A: REGISTER with a 23-byte list",
            out(A, sa_out::REGISTER, 0, vec![0; 23]),
            Expect::Any,
        ),
        check(A),
    ];
    Script {
        name: "register-variants".into(),
        steps,
    }
}

/// RESERVE, conflicts, writes and RELEASE for one reservation type.
fn reservation_type(ty: u8) -> Script {
    let all_registrants = ty == 7 || ty == 8;
    let registrants_only = ty == 5 || ty == 6 || all_registrants;
    let other = if ty == 1 { 3 } else { 1 };
    let steps = vec![
        register_ignore(A, KA, Expect::Good),
        reserve(A, KA, ty, Expect::Good),
        check(A),
        read(B, sa_in::READ_RESERVATION, 64, Expect::Good),
        // B is not registered: it may neither reserve nor write.
        reserve(B, KB, ty, CONFLICT),
        write(B, CONFLICT),
        // Registered, B may write under the registrants types.
        register_ignore(B, KB, Expect::Good),
        write(
            B,
            if registrants_only {
                Expect::Good
            } else {
                CONFLICT
            },
        ),
        reserve(
            B,
            KB,
            ty,
            if all_registrants {
                Expect::Good
            } else {
                CONFLICT
            },
        ),
        write(A, Expect::Good),
        check(B),
        // Releasing with another type is an error (SPC-4 says INVALID RELEASE
        // OF PERSISTENT RESERVATION; Debian 6.1 LIO answers RESERVATION
        // CONFLICT); with the right type it works.
        release(A, KA, other, CONFLICT),
        release(A, KA, ty, Expect::Good),
        read(B, sa_in::READ_KEYS, 64, Expect::Any),
        read(B, sa_in::READ_KEYS, 64, Expect::Good),
        check(A),
        write(B, Expect::Good),
        reserve(A, KA, ty, Expect::Good),
        clear(A, KA, Expect::Good),
        // The other initiator learns about it through a unit attention.
        read(B, sa_in::READ_KEYS, 64, Expect::Sense(6, 0x2a, 0x03)),
        read(B, sa_in::READ_KEYS, 64, Expect::Good),
        check(B),
    ];
    Script {
        name: format!("type-{ty}"),
        steps,
    }
}

/// PREEMPT takes the reservation and removes the victim's registration;
/// CLEAR removes everything.
fn clear_and_preempt() -> Script {
    let steps = vec![
        register_ignore(A, KA, Expect::Good),
        register_ignore(B, KB, Expect::Good),
        reserve(A, KA, 5, Expect::Good),
        preempt(B, KB, KA, 5, Expect::Good),
        read(A, sa_in::READ_KEYS, 64, Expect::Status(2)),
        read(A, sa_in::READ_KEYS, 64, Expect::Good),
        write(A, CONFLICT),
        check(B),
        register_ignore(A, KA, Expect::Good),
        preempt(B, KB, KA, 5, Expect::Good),
        read(A, sa_in::READ_RESERVATION, 64, Expect::Any),
        read(A, sa_in::READ_RESERVATION, 64, Expect::Good),
        clear(B, KB, Expect::Good),
        check(B),
        read(A, sa_in::READ_KEYS, 64, Expect::Any),
        check(A),
    ];
    Script {
        name: "clear-and-preempt".into(),
        steps,
    }
}

/// PREEMPT AND ABORT error paths only: a successful one hangs the LUN on
/// Debian's 6.1 LIO (see the test-bed notes); PREEMPT covers the success
/// path.
fn preempt_abort_errors() -> Script {
    let steps = vec![
        register_ignore(A, KA, Expect::Good),
        register_ignore(B, KB, Expect::Good),
        reserve(A, KA, 5, Expect::Good),
        preempt_abort(B, 0x77, KA, 5, CONFLICT),
        register(B, KB, 0, Expect::Good),
        preempt_abort(B, KB, KA, 5, CONFLICT),
        register_ignore(B, KB, Expect::Good),
        check(A),
    ];
    Script {
        name: "preempt-and-abort-errors".into(),
        steps,
    }
}

/// REGISTER AND MOVE hands the reservation to B's I_T nexus.
fn register_and_move() -> Script {
    let mv = |key: u64, sa_key: u64, port: u16, tid: Vec<u8>| {
        MoveParamList {
            key,
            sa_key,
            unreg: false,
            aptpl: false,
            relative_target_port: port,
            transport_id: tid,
        }
        .encode()
    };
    let steps = vec![
        register_ignore(A, KA, Expect::Good),
        reserve(A, KA, 5, Expect::Good),
        step(
            "A: REGISTER AND MOVE to B (relative port 2)",
            out(
                A,
                sa_out::REGISTER_AND_MOVE,
                5,
                mv(KA, KB, 2, pr::sas_transport_id(INITIATOR_SAS[B])),
            ),
            Expect::Good,
        ),
        read(A, sa_in::READ_FULL_STATUS, 8192, Expect::Good),
        check(A),
        check(B),
        step(
            "B: REGISTER AND MOVE to itself",
            out(
                B,
                sa_out::REGISTER_AND_MOVE,
                5,
                mv(KB, 0xbb, 2, pr::sas_transport_id(INITIATOR_SAS[B])),
            ),
            Expect::Any,
        ),
        step(
            "B: REGISTER AND MOVE with a bad TransportID length",
            out(B, sa_out::REGISTER_AND_MOVE, 5, {
                let mut p = mv(KB, KA, 1, pr::sas_transport_id(INITIATOR_SAS[A]));
                p[20..24].copy_from_slice(&100u32.to_be_bytes());
                p
            }),
            Expect::Any,
        ),
        check(B),
    ];
    Script {
        name: "register-and-move".into(),
        steps,
    }
}

/// Pacemaker's fence_scsi: every step after a TEST UNIT READY; register
/// with REGISTER AND IGNORE, reserve type 5, fence the other node by
/// preempting its key (PREEMPT here; PREEMPT AND ABORT hangs 6.1 LIO).
fn fence_scsi() -> Script {
    let steps = vec![
        tur(A),
        register_ignore(A, KA, Expect::Good),
        tur(B),
        register_ignore(B, KB, Expect::Good),
        tur(A),
        read(A, sa_in::READ_RESERVATION, 8192, Expect::Good),
        reserve(A, KA, 5, Expect::Good),
        read(A, sa_in::READ_KEYS, 8192, Expect::Good),
        // Node B is fenced.
        tur(A),
        preempt(A, KA, KB, 5, Expect::Good),
        read(A, sa_in::READ_KEYS, 8192, Expect::Good),
        // B's next command reports REGISTRATIONS PREEMPTED; then writes fail.
        tur(B),
        write(B, CONFLICT),
        read(B, sa_in::READ_KEYS, 8192, Expect::Good),
        read(B, sa_in::READ_RESERVATION, 8192, Expect::Good),
        check(A),
        // Unfencing B: it registers again.
        register_ignore(B, KB, Expect::Good),
        write(B, Expect::Good),
        check(B),
    ];
    Script {
        name: "fence-scsi".into(),
        steps,
    }
}

/// The Windows failover-cluster validation sequence (MS-CSVP): clear,
/// register (ignore existing), reserve, read reservation and keys,
/// preempt by the other node, release, unregister, clear.
fn windows_cluster() -> Script {
    let steps = vec![
        register_ignore(A, KA, Expect::Good),
        clear(A, KA, Expect::Good),
        register_ignore(A, KA, Expect::Good),
        register_ignore(B, KB, Expect::Good),
        reserve(A, KA, 5, Expect::Good),
        read(A, sa_in::READ_RESERVATION, 8192, Expect::Good),
        read(B, sa_in::READ_RESERVATION, 8192, Expect::Good),
        read(B, sa_in::READ_KEYS, 8192, Expect::Good),
        preempt(B, KB, KA, 5, Expect::Good),
        read(B, sa_in::READ_RESERVATION, 8192, Expect::Good),
        release(B, KB, 5, Expect::Good),
        read(A, sa_in::READ_RESERVATION, 8192, Expect::Any),
        register_ignore(A, KA, Expect::Good),
        register_ignore(A, 0, Expect::Good),
        clear(B, KB, Expect::Good),
        read(A, sa_in::READ_KEYS, 8192, Expect::Any),
        check(A),
        check(B),
    ];
    Script {
        name: "windows-cluster".into(),
        steps,
    }
}

/// QEMU 11's migrate-pr: both hosts registered, the source reserves, the
/// destination preempts with its own key, REPORT CAPABILITIES read.
fn migrate_pr() -> Script {
    let steps = vec![
        register(A, 0, KA, Expect::Good),
        register(B, 0, KB, Expect::Good),
        reserve(A, KA, 5, Expect::Good),
        read(B, sa_in::REPORT_CAPABILITIES, 8, Expect::Good),
        preempt(B, KB, KA, 5, Expect::Good),
        read(B, sa_in::READ_RESERVATION, 8192, Expect::Good),
        // Rollback: the source takes it back.
        register_ignore(A, KA, Expect::Any),
        register_ignore(A, KA, Expect::Good),
        preempt(A, KA, KB, 5, Expect::Good),
        check(A),
    ];
    Script {
        name: "migrate-pr".into(),
        steps,
    }
}

/// Error paths: read-only fd, unsupported type, unregistered reserve,
/// unknown service actions, odd scope, bytes 5-6 of the length.
fn errors() -> Script {
    let steps = vec![
        step(
            "A: REGISTER on a read-only fd",
            Op::Out {
                who: A,
                sa: sa_out::REGISTER,
                ty: 0,
                params: params(0, KA),
                read_only: true,
            },
            Expect::Sense(5, 0x20, 0),
        ),
        check(A),
        // Unregistered: SPC-4 says RESERVATION CONFLICT; Debian 6.1 LIO
        // answers CHECK CONDITION 02/08/00 here (compared three ways anyway).
        reserve(A, KA, 5, Expect::Any),
        register_ignore(A, KA, Expect::Good),
        reserve(A, KA, 2, Expect::Sense(5, 0x24, 0)),
        reserve(A, KA, 0x0f, Expect::Any),
        step(
            "A: PR OUT service action 8",
            out(A, sa_out::REPLACE_LOST_RESERVATION, 5, params(KA, 0)),
            Expect::Any,
        ),
        step(
            "A: PR OUT service action 0x1f",
            out(A, 0x1f, 0, params(KA, 0)),
            Expect::Any,
        ),
        step(
            "A: RESERVE with scope 1",
            Op::Out {
                who: A,
                sa: 0x21,
                ty: 5,
                params: params(KA, 0),
                read_only: false,
            },
            Expect::Any,
        ),
        check(A),
    ];
    Script {
        name: "errors".into(),
        steps,
    }
}

/// Results of one script on one device kind.
pub fn run(script: &Script, kind: Kind, next_lun: &mut usize) -> Vec<(String, Result<(), String>)> {
    let base = format!("{}/{}", script.name, kind.name());
    let mut results = Vec::new();
    let mut transcripts = Vec::new();
    for via in [Via::Ours, Via::Reference, Via::Direct] {
        let lun = match lio::create(*next_lun) {
            Ok(l) => l,
            Err(e) => {
                results.push((format!("{base}/{}/lun", via.name()), Err(e)));
                return results;
            }
        };
        *next_lun += 1;
        let devices: [PathBuf; 2] = [0, 1].map(|i| match kind {
            Kind::Block => lun.paths[i].block.clone(),
            Kind::Sg => lun.paths[i].sg.clone(),
        });
        let sgs: [PathBuf; 2] = [0, 1].map(|i| lun.paths[i].sg.clone());
        let (transcript, problems) = play(script, via, &devices, &sgs);
        let expectations: Vec<String> = problems;
        results.push((
            format!("{base}/{}/expectations", via.name()),
            if expectations.is_empty() {
                Ok(())
            } else {
                Err(expectations.join("; "))
            },
        ));
        transcripts.push((via, transcript));
    }
    let ours = &transcripts[0].1;
    for (via, other) in &transcripts[1..] {
        let mut diffs = Vec::new();
        for (i, ((label, o), (_, t))) in ours.iter().zip(other).enumerate() {
            let same = match (o, t) {
                (None, _) | (_, None) => true,
                (Some(o), Some(t)) if *via == Via::Direct => same_as_device(o, t),
                (Some(o), Some(t)) => o == t,
            };
            if !same {
                diffs.push(format!(
                    "step {i} ({label}): pr-helper {} vs {} {}",
                    o.as_ref().map_or(String::new(), Outcome::show),
                    via.name(),
                    t.as_ref().map_or(String::new(), Outcome::show)
                ));
            }
        }
        results.push((
            format!("{base}/pr-helper=={}", via.name()),
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(diffs.join("; "))
            },
        ));
    }
    results
}

/// pr-helper's reply against sg_raw's: same status and data; sense equal
/// over the bytes the device returned, zero after them.
fn same_as_device(ours: &Outcome, device: &Outcome) -> bool {
    let n = device.sense.len().min(ours.sense.len());
    ours.status == device.status
        && ours.data == device.data
        && ours.sense[..n] == device.sense[..n]
        && ours.sense[n..].iter().all(|&b| b == 0)
}

/// Plays a script; returns (label, outcome) per step (None where the step
/// does not apply to this path) and the expectation failures.
fn play(
    script: &Script,
    via: Via,
    devices: &[PathBuf; 2],
    sgs: &[PathBuf; 2],
) -> (Vec<(String, Option<Outcome>)>, Vec<String>) {
    let mut transcript = Vec::new();
    let mut problems = Vec::new();
    for (i, s) in script.steps.iter().enumerate() {
        let outcome = match &s.op {
            Op::In { who, sa, alloc } => {
                exec::run(via, &devices[*who], &pr_in_cdb(*sa, *alloc), &[], false)
            }
            Op::Out {
                who,
                sa,
                ty,
                params,
                read_only,
            } => {
                if *read_only && via == Via::Direct {
                    transcript.push((s.label.clone(), None));
                    continue;
                }
                // `sa` may carry a scope in bits 5-7 (the scope 1 test).
                let cdb = pr_out_cdb(sa & 0x1f, sa >> 5, *ty, params.len() as u32);
                exec::run(via, &devices[*who], &cdb, params, *read_only)
            }
            Op::Write { who } => direct_write(&sgs[*who]),
            Op::Tur { who } => exec::run(Via::Direct, &sgs[*who], &[0u8; 16], &[], false),
            Op::Check { who } => match state_check(via, &devices[*who]) {
                Ok(o) => Ok(o),
                Err(e) => {
                    problems.push(format!("step {i} ({}): {e}", s.label));
                    transcript.push((s.label.clone(), None));
                    continue;
                }
            },
        };
        match outcome {
            Ok(o) => {
                if let Err(e) = expectation(s.expect, &o) {
                    problems.push(format!("step {i} ({}): {e}", s.label));
                }
                transcript.push((s.label.clone(), Some(o)));
            }
            Err(e) => {
                problems.push(format!("step {i} ({}): {e}", s.label));
                transcript.push((s.label.clone(), None));
            }
        }
    }
    (transcript, problems)
}

fn expectation(expect: Expect, o: &Outcome) -> Result<(), String> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Good => o.status == 0,
        Expect::Status(s) => o.status == s,
        Expect::Sense(k, a, q) => o.sense_code() == Some((k, a, q)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {}", o.show()))
    }
}

/// WRITE(10), LBA 0, one 512-byte block, directly on the sg node.
fn direct_write(sg: &std::path::Path) -> Result<Outcome, String> {
    let block = vec![0x5au8; 512];
    let mut cdb = [0u8; 16];
    cdb[0] = 0x2a;
    cdb[8] = 1;
    // sg_raw takes the parameter bytes as data-out; reuse the PR OUT path.
    exec::run(Via::Direct, sg, &cdb, &block, false)
}

/// READ KEYS and READ RESERVATION through `via`, each equal to what
/// sg_persist reads directly; the outcome recorded is the helper's (or
/// sg_raw's) pair of replies.
fn state_check(via: Via, device: &std::path::Path) -> Result<Outcome, String> {
    let keys = exec::run(via, device, &pr_in_cdb(sa_in::READ_KEYS, 8192), &[], false)?;
    let resv = exec::run(
        via,
        device,
        &pr_in_cdb(sa_in::READ_RESERVATION, 8192),
        &[],
        false,
    )?;
    if keys.status != 0 || resv.status != 0 {
        return Err(format!(
            "state read failed: keys {} reservation {}",
            keys.show(),
            resv.show()
        ));
    }
    let direct_keys = exec::sg_persist_in(device, "-k")?;
    let direct_resv = exec::sg_persist_in(device, "-r")?;
    if keys.data != direct_keys {
        return Err(format!(
            "READ KEYS {} but sg_persist {}",
            hex(&keys.data),
            hex(&direct_keys)
        ));
    }
    if resv.data != direct_resv {
        return Err(format!(
            "READ RESERVATION {} but sg_persist {}",
            hex(&resv.data),
            hex(&direct_resv)
        ));
    }
    let mut data = keys.data;
    data.extend_from_slice(&resv.data);
    Ok(Outcome {
        status: 0,
        sense: keys.sense,
        data,
    })
}
