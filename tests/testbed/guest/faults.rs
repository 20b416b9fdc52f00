//! Faults on real devices: a LUN that disappears, once between a client
//! opening it and its request, once while its request is outstanding.
//!
//! - Removed before the request: fds on the initiator's sd and sg nodes
//!   are opened, the LUN is deleted from LIO (the kernel removes both SCSI
//!   devices), then READ KEYS goes through each helper on the held fds. The
//!   answer must be the one the reference's mapping (spec §4.3) gives for
//!   what SG_IO itself reports on that fd, measured directly in the same
//!   state; qemu-pr-helper 10.0.2 differs only by D16 (ENODEV).
//! - Removed while outstanding: a request hangs on a dm-multipath map
//!   (`queue_if_no_path`, its only path failed) over the LUN; the LUN is
//!   deleted, then multipath is told to stop queueing (as multipathd does
//!   once no path can return). The outstanding request must be answered
//!   with CHECK CONDITION, the same as qemu-pr-helper's, and the helper must
//!   go on serving a live LUN.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::Duration;

use pr_helper::scsi::pr::{pr_in_cdb, sa_in};
use pr_helper::scsi::sgio::{self, DataPhase};
use pr_helper::scsi::{self, SenseCode};

use crate::exec::{self, Outcome, Via, OURS_SOCKET, REFERENCE_SOCKET};
use crate::isolation::{dmsetup, hung_map};
use crate::{lio, result};

const ALLOC: u16 = 8192;

/// Runs the suite.
pub fn run(next_lun: &mut usize) {
    let first = *next_lun;
    *next_lun += 3;
    let luns = (0..3)
        .map(|i| lio::create(first + i))
        .collect::<Result<Vec<_>, _>>();
    let luns = match luns {
        Ok(l) => l,
        Err(e) => return result("faults/luns", Err(e)),
    };
    // Both nodes are opened first: once the LUN is gone they cannot be.
    let opened = [
        ("sd", &luns[0].paths[0].block),
        ("sg", &luns[0].paths[0].sg),
    ]
    .map(|(node, path)| (node, exec::open(path, false)));
    let removed = lio::remove(first);
    for (node, dev) in opened {
        let r = match (&removed, dev) {
            (Err(e), _) => Err(format!("remove LUN: {e}")),
            (_, Err(e)) => Err(e),
            (Ok(()), Ok(dev)) => removed_before_request(node, &dev),
        };
        result(&format!("faults/lun-removed-before-request/{node}"), r);
    }
    result(
        "faults/lun-removed-while-outstanding",
        removed_while_outstanding(first + 1, &luns[1].paths),
    );
    let live = &luns[2].paths[0].block;
    result(
        "faults/still-serving-after-removals",
        exec::run(
            Via::Ours,
            live,
            &pr_in_cdb(sa_in::READ_KEYS, ALLOC),
            &[],
            false,
        )
        .and_then(|o| if o.status == 0 { Ok(()) } else { Err(o.show()) }),
    );
}

/// READ KEYS on `dev`, a node of a LUN removed since it was opened.
fn removed_before_request(node: &str, dev: &File) -> Result<(), String> {
    let cdb = pr_in_cdb(sa_in::READ_KEYS, ALLOC);
    let mut buf = vec![0u8; usize::from(ALLOC)];
    let direct = sgio::execute(
        dev.as_fd(),
        &cdb,
        DataPhase::FromDevice(&mut buf),
        Duration::from_secs(30),
    );
    if let Err(errno) = direct {
        println!("FIGURE faults-removed-{node}-errno {errno}");
    }
    let enodev = matches!(direct, Err(libc::ENODEV));
    let direct_seen = format!("{direct:?}");
    let expected = scsi::complete(direct, buf.len());
    if expected.status == scsi::status::GOOD {
        return Err(format!("{node}: SG_IO still succeeds after removal"));
    }
    let ours = exec::with_fd(OURS_SOCKET, dev.as_fd(), &cdb, &[])?;
    if ours.status != expected.status || ours.sense != expected.sense || !ours.data.is_empty() {
        return Err(format!(
            "pr-helper answered {}, expected status={:#04x} sense={} (SG_IO: {direct_seen})",
            ours.show(),
            expected.status,
            exec::hex(&expected.sense[..18])
        ));
    }
    let reference = exec::with_fd(REFERENCE_SOCKET, dev.as_fd(), &cdb, &[])?;
    same_modulo_d16(&ours, &reference, enodev)
}

/// Ours and the reference agree, except that where SG_IO failed with
/// ENODEV, 10.0.2 reports 0B/00/06 and we 04/44/00 (D16).
fn same_modulo_d16(ours: &Outcome, reference: &Outcome, enodev: bool) -> Result<(), String> {
    let mut expected = reference.clone();
    if enodev {
        expected.sense = SenseCode::TARGET_FAILURE.fixed_buffer().to_vec();
    }
    if *ours == expected {
        Ok(())
    } else {
        Err(format!(
            "pr-helper {} vs qemu-pr-helper {} (ENODEV: {enodev})",
            ours.show(),
            reference.show()
        ))
    }
}

fn removed_while_outstanding(index: usize, paths: &[lio::Path2; 2]) -> Result<(), String> {
    let mut maps = Vec::new();
    let (tx, rx) = mpsc::channel();
    for (via, path) in [(Via::Ours, &paths[0]), (Via::Reference, &paths[1])] {
        let name = format!("prh-vanish-{}", via.name());
        let (dm, _) = hung_map(&name, &path.block)?;
        maps.push(name);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = exec::run(via, &dm, &pr_in_cdb(sa_in::READ_KEYS, ALLOC), &[], false);
            let _ = tx.send((via, r));
        });
    }
    drop(tx);
    // Let both requests reach the (queueing) map.
    std::thread::sleep(Duration::from_millis(1000));
    if let Ok((via, r)) = rx.try_recv() {
        return Err(format!("{} answered before the removal: {r:?}", via.name()));
    }
    lio::remove(index)?;
    if let Ok((via, r)) = rx.recv_timeout(Duration::from_millis(500)) {
        return Err(format!(
            "{} answered while still queueing: {r:?}",
            via.name()
        ));
    }
    for map in &maps {
        dmsetup(&["message", map, "0", "fail_if_no_path"])?;
    }
    let mut answers = Vec::new();
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((via, r)) => answers.push((via, r?)),
            Err(_) => return Err(format!("no answer 60 s after the map gave up: {answers:?}")),
        }
    }
    for map in &maps {
        let _ = dmsetup(&["remove", "--force", map]);
    }
    answers.sort_by_key(|(via, _)| via.name());
    let [(_, ours), (_, reference)] = [answers[0].clone(), answers[1].clone()];
    if ours.status != scsi::status::CHECK_CONDITION {
        return Err(format!("pr-helper answered {}", ours.show()));
    }
    let enodev = ours.sense_code() == Some((4, 0x44, 0));
    same_modulo_d16(&ours, &reference, enodev)
}
