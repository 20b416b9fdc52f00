//! `pr-helper paths MAP`: which path of a dm-multipath map holds which
//! registration, and whether the paths agree. The check an administrator
//! needs after a failover or a migration (issue 20): a library that
//! registers a key on some paths of a map only (libmpathpersist before
//! 0.13 after QEMU's `migrate-pr` hand-over, a path that was down while the
//! key was registered and never got it) leaves a map whose writes conflict
//! on some paths. mpathpersist shows the map's keys, sg_persist one path's
//! view; neither says which path is missing.
//!
//! How it finds out, for each path (a slave of the map in sysfs):
//! - the device's registrations: READ FULL STATUS, sent with SG_IO through
//!   the path itself (so every path is also shown to reach the device; any
//!   path's answer lists every I_T nexus of the logical unit);
//! - the path's own I_T nexus: its target port from VPD page 0x83 (the
//!   RELATIVE TARGET PORT IDENTIFIER, which READ FULL STATUS gives with each
//!   registration) and its initiator port from sysfs, per transport (LIO
//!   loopback, Fibre Channel, iSCSI, SAS). Where one of the two is unknown
//!   the match uses the other and says so.
//!
//! Then the verdict: consistent when every active path (SCSI device state
//! `running`, READ FULL STATUS answered) is registered with the same key,
//! or none is. Paths that are not running are shown but not judged: a
//! path that was down while the key was registered gets it from multipathd
//! when it comes back.
//!
//! The judging ([`judge`]) and the output ([`Report::text`],
//! [`Report::json`]) are pure and unit-tested; reading sysfs and sending
//! the commands is [`gather`]. SG_IO on the path devices needs root
//! (CAP_SYS_RAWIO); nothing is ever sent but PR IN and INQUIRY.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::tools::{describe_status, hex};
use crate::scsi::pr::decode::{self, FullStatus, Registration};
use crate::scsi::pr::{self, pr_in_cdb, sa_in, TransportId};
use crate::scsi::sgio::{self, DataPhase};
use crate::scsi::{self, status, vpd};

/// `pr-helper paths`.
#[derive(Debug, Args)]
pub struct PathsArgs {
    /// The multipath map: /dev/mapper/NAME, /dev/dm-N, or NAME (looked up
    /// in /dev/mapper).
    pub map: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// SG_IO timeout per command, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

/// Exit codes of `pr-helper paths`. 1 is also what a usage error gives
/// (every pr-helper command line error exits 1).
pub mod exit {
    /// Every active path holds the same registration (or none does).
    pub const CONSISTENT: u8 = 0;
    /// Bad arguments, not a multipath map, or no path answered.
    pub const ERROR: u8 = 1;
    /// The paths disagree: some active path lacks the key another holds, or
    /// holds another key, or the paths report different registrations.
    pub const DISAGREE: u8 = 3;
    /// No disagreement seen, but some active path could not be judged
    /// (its READ FULL STATUS failed, or its I_T nexus could not be matched).
    pub const UNDETERMINED: u8 = 4;
}

/// Why `paths` could not judge the map at all.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// The argument cannot be looked at.
    #[error("{path}: {source}")]
    Stat {
        /// The path as given (or as completed).
        path: PathBuf,
        /// What stat said.
        source: io::Error,
    },
    /// Not a block device.
    #[error("{0}: not a block device")]
    NotBlockDevice(PathBuf),
    /// A block device, but not a device-mapper one.
    #[error("{path}: {dev} is not a device-mapper device")]
    NotDeviceMapper {
        /// The path as given.
        path: PathBuf,
        /// Its kernel name (or MAJ:MIN when sysfs does not know it).
        dev: String,
    },
    /// A device-mapper device that multipath does not own.
    #[error(
        "{path}: {dm} is not a multipath map (device-mapper uuid {uuid:?}; \
         multipath maps have uuids starting with \"mpath-\")"
    )]
    NotMultipath {
        /// The path as given.
        path: PathBuf,
        /// dm-N.
        dm: String,
        /// Its dm uuid.
        uuid: String,
    },
    /// sysfs did not answer.
    #[error("{0}: {1}")]
    Sysfs(PathBuf, io::Error),
    /// A map without paths.
    #[error("{0} has no paths")]
    NoPaths(String),
    /// Every path's READ FULL STATUS failed.
    #[error("no path of {map} answered READ FULL STATUS: {reasons}")]
    NoStatus {
        /// dm-N.
        map: String,
        /// Each path's failure.
        reasons: String,
    },
}

/// The map, as sysfs names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    /// What the user gave.
    pub given: String,
    /// The kernel name, dm-N.
    pub dm: String,
    /// The device-mapper name (the /dev/mapper one).
    pub name: String,
    /// The device-mapper uuid ("mpath-" and the WWID).
    pub uuid: String,
}

/// What is known of one path before its registration is looked up.
#[derive(Debug, Clone)]
pub struct PathFacts {
    /// Kernel name, e.g. sdb.
    pub name: String,
    /// SCSI device state (`running`, `offline`, `blocked`, ...), or
    /// `unknown` where sysfs has none.
    pub state: String,
    /// H:C:T:L.
    pub hctl: Option<String>,
    /// The relative target port identifier, or why it is unknown.
    pub target_port: Result<u16, String>,
    /// The initiator port, or why it is unknown.
    pub initiator: Result<TransportId, String>,
    /// The path's READ FULL STATUS, or why it has none.
    pub status: Result<FullStatus, String>,
}

impl PathFacts {
    /// Judged paths: running and answering.
    fn active(&self) -> bool {
        self.state == "running" && self.status.is_ok()
    }
}

/// A path's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Registered with this key.
    Key(u64),
    /// No registration through this path's nexus.
    No,
    /// Cannot tell, and why.
    Unknown(String),
}

/// What a path's registration was matched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedOn {
    /// Initiator and target port: the I_T nexus itself.
    Nexus,
    /// The initiator port only (the target port is unknown): a
    /// registration of the same initiator through another port of the
    /// device would count too.
    Initiator,
    /// The target port only (the initiator is unknown): another host's
    /// registration through the same target port would count too.
    TargetPort,
}

impl MatchedOn {
    fn name(self) -> &'static str {
        match self {
            MatchedOn::Nexus => "nexus",
            MatchedOn::Initiator => "initiator only",
            MatchedOn::TargetPort => "target port only",
        }
    }
}

/// One path, judged.
#[derive(Debug, Clone)]
pub struct PathReport {
    /// What was found.
    pub facts: PathFacts,
    /// Its registration.
    pub registered: Registered,
    /// What the registration was matched on (`None`: nothing to match on).
    pub matched_on: Option<MatchedOn>,
    /// It holds the reservation (or is a registrant of an all-registrants
    /// one).
    pub holder: bool,
    /// Whether the verdict counts it (`PathFacts::active`).
    pub judged: bool,
}

/// The reservation on the logical unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    /// The holder's key; `None` for the all-registrants types (7, 8), held
    /// by every registrant.
    pub key: Option<u64>,
    /// TYPE.
    pub pr_type: u8,
    /// SCOPE.
    pub scope: u8,
    /// Paths of the map that hold it.
    pub map_holders: Vec<String>,
    /// Holders that are not paths of the map (other hosts).
    pub other_holders: usize,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every active path has the same registration.
    Consistent,
    /// They differ.
    Disagree,
    /// No difference seen, but some active path could not be judged.
    Undetermined,
}

impl Verdict {
    /// The exit code ([`exit`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Consistent => exit::CONSISTENT,
            Verdict::Disagree => exit::DISAGREE,
            Verdict::Undetermined => exit::UNDETERMINED,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verdict::Consistent => "consistent",
            Verdict::Disagree => "disagree",
            Verdict::Undetermined => "undetermined",
        }
    }
}

/// Everything `paths` reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// The map.
    pub map: MapInfo,
    /// The path whose READ FULL STATUS the report uses.
    pub status_from: String,
    /// That READ FULL STATUS.
    pub status: FullStatus,
    /// The paths, in the order the map lists them (sorted by name).
    pub paths: Vec<PathReport>,
    /// The reservation, if any.
    pub reservation: Option<ReservationView>,
    /// Registrations through nexuses that are no path of the map (other
    /// hosts, or this host's other initiators).
    pub others: Vec<Registration>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why (empty when consistent without remarks).
    pub reasons: Vec<String>,
}

/// The registrations (indices into `regs`) that belong to `path`, what they
/// were matched on, and the resulting registration.
fn match_path(
    path: &PathFacts,
    regs: &[Registration],
) -> (Vec<usize>, Option<MatchedOn>, Registered) {
    let tid = |r: &Registration| TransportId::parse(&r.transport_id);
    let (on, matches): (MatchedOn, Vec<usize>) = match (&path.initiator, &path.target_port) {
        (Ok(i), Ok(port)) => (
            MatchedOn::Nexus,
            regs.iter()
                .enumerate()
                // ALL_TG_PT: the registration holds on every target port.
                .filter(|(_, r)| {
                    tid(r).as_ref() == Some(i) && (r.all_tg_pt || r.relative_target_port == *port)
                })
                .map(|(n, _)| n)
                .collect(),
        ),
        (Ok(i), Err(_)) => (
            MatchedOn::Initiator,
            regs.iter()
                .enumerate()
                .filter(|(_, r)| tid(r).as_ref() == Some(i))
                .map(|(n, _)| n)
                .collect(),
        ),
        (Err(why), Ok(port)) => {
            // An ALL_TG_PT registration's port field means nothing: from an
            // unknown initiator, it may or may not be this path's.
            if regs.iter().any(|r| r.all_tg_pt) {
                return (
                    Vec::new(),
                    None,
                    Registered::Unknown(format!(
                        "{why}, and registrations with ALL_TG_PT exist (they cannot be \
                         matched on the target port)"
                    )),
                );
            }
            (
                MatchedOn::TargetPort,
                regs.iter()
                    .enumerate()
                    .filter(|(_, r)| r.relative_target_port == *port)
                    .map(|(n, _)| n)
                    .collect(),
            )
        }
        (Err(a), Err(b)) => return (Vec::new(), None, Registered::Unknown(format!("{a}; {b}"))),
    };
    let mut keys: Vec<u64> = matches.iter().map(|n| regs[*n].key).collect();
    keys.sort_unstable();
    keys.dedup();
    let registered = match keys[..] {
        [] => Registered::No,
        [key] => Registered::Key(key),
        _ => Registered::Unknown(format!(
            "several registrations match ({}; {}): cannot tell which is this path's",
            on.name(),
            keys.iter()
                .map(|k| format!("0x{k:x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    (matches, Some(on), registered)
}

/// "a", "a and b", "a, b and c".
fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Judges a map from its paths' facts: matches each path to its
/// registration in the first READ FULL STATUS any path gave, and decides
/// the verdict. Errors only when no path gave one.
pub fn judge(map: MapInfo, paths: Vec<PathFacts>) -> Result<Report, PathsError> {
    let Some((status_from, status)) = paths
        .iter()
        .find_map(|p| p.status.as_ref().ok().map(|s| (p.name.clone(), s.clone())))
    else {
        if paths.is_empty() {
            return Err(PathsError::NoPaths(map.dm));
        }
        let reasons = paths
            .iter()
            .map(|p| {
                format!(
                    "{}: {}",
                    p.name,
                    p.status.as_ref().err().cloned().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(PathsError::NoStatus {
            map: map.dm,
            reasons,
        });
    };
    let regs = &status.registrations;
    let mut disagree = Vec::new();
    let mut undetermined = Vec::new();
    // Every path sees the same logical unit: the same registrations
    // (the generation may differ if a command came in between).
    for p in &paths {
        if let Ok(s) = &p.status {
            if s.registrations != *regs {
                disagree.push(format!(
                    "{} reports other registrations than {status_from} ({} vs {}, PR \
                     generation 0x{:x} vs 0x{:x}): another logical unit, or a change \
                     while reading (run again)",
                    p.name,
                    s.registrations.len(),
                    regs.len(),
                    s.generation,
                    status.generation
                ));
            }
        }
    }
    let mut attributed = vec![false; regs.len()];
    let mut reports = Vec::new();
    for facts in paths {
        let (matches, matched_on, registered) = match_path(&facts, regs);
        for n in &matches {
            attributed[*n] = true;
        }
        let judged = facts.active();
        if facts.state == "running" {
            if let Err(why) = &facts.status {
                undetermined.push(format!(
                    "{} is running but READ FULL STATUS failed: {why}",
                    facts.name
                ));
            }
        }
        if let (true, Registered::Unknown(why)) = (judged, &registered) {
            undetermined.push(format!("{}: {why}", facts.name));
        }
        reports.push(PathReport {
            holder: matches.iter().any(|n| regs[*n].holder),
            facts,
            registered,
            matched_on,
            judged,
        });
    }
    let judged: Vec<&PathReport> = reports.iter().filter(|p| p.judged).collect();
    let mut keys: Vec<u64> = judged
        .iter()
        .filter_map(|p| match p.registered {
            Registered::Key(k) => Some(k),
            _ => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    match keys[..] {
        [] => {}
        [key] => {
            let holders: Vec<&str> = judged
                .iter()
                .filter(|p| p.registered == Registered::Key(key))
                .map(|p| p.facts.name.as_str())
                .collect();
            let verb = if holders.len() == 1 { "holds" } else { "hold" };
            for p in judged.iter().filter(|p| p.registered == Registered::No) {
                disagree.push(format!(
                    "{} not registered while {} {verb} 0x{key:x}",
                    p.facts.name,
                    and_list(&holders)
                ));
            }
        }
        _ => {
            let each: Vec<String> = judged
                .iter()
                .filter_map(|p| match p.registered {
                    Registered::Key(k) => Some(format!("{} 0x{k:x}", p.facts.name)),
                    _ => None,
                })
                .collect();
            disagree.push(format!("different keys: {}", each.join(", ")));
        }
    }
    if judged.is_empty() {
        undetermined.push("no path is running and answering".into());
    }
    let reservation = regs.iter().find(|r| r.holder).map(|first| {
        let all_registrants = matches!(first.pr_type, 7 | 8);
        let map_holders = reports
            .iter()
            .filter(|p| p.holder)
            .map(|p| p.facts.name.clone())
            .collect();
        let other_holders = regs
            .iter()
            .zip(&attributed)
            .filter(|(r, mine)| r.holder && !**mine)
            .count();
        ReservationView {
            key: (!all_registrants).then_some(first.key),
            pr_type: first.pr_type,
            scope: first.scope,
            map_holders,
            other_holders,
        }
    });
    let others = regs
        .iter()
        .zip(&attributed)
        .filter(|(_, mine)| !**mine)
        .map(|(r, _)| r.clone())
        .collect();
    let verdict = if !disagree.is_empty() {
        Verdict::Disagree
    } else if !undetermined.is_empty() {
        Verdict::Undetermined
    } else {
        Verdict::Consistent
    };
    disagree.extend(undetermined);
    Ok(Report {
        map,
        status_from,
        status,
        paths: reports,
        reservation,
        others,
        verdict,
        reasons: disagree,
    })
}

fn describe_tid(tid: &[u8]) -> String {
    match TransportId::parse(tid) {
        Some(t) => t.to_string(),
        None => format!("TransportID {}", hex(tid)),
    }
}

impl Report {
    /// The text output: a header, one line per path, the reservation, other
    /// nexuses' registrations, the verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let m = &self.map;
        let _ = writeln!(
            out,
            "{} ({}, {}, uuid {}): {} path{}, PR generation 0x{:x} (READ FULL STATUS through {})",
            m.given,
            m.dm,
            m.name,
            m.uuid,
            self.paths.len(),
            if self.paths.len() == 1 { "" } else { "s" },
            self.status.generation,
            self.status_from
        );
        for p in &self.paths {
            let f = &p.facts;
            let port = match &f.target_port {
                Ok(n) => format!("port {n}"),
                Err(_) => "port ?".into(),
            };
            let initiator = match &f.initiator {
                Ok(t) => t.to_string(),
                Err(_) => "initiator unknown".into(),
            };
            let reg = match &p.registered {
                Registered::Key(k) => format!("key 0x{k:x}"),
                Registered::No => "not registered".into(),
                Registered::Unknown(_) => "registration unknown".into(),
            };
            let mut line = format!(
                "  {:<6} {:<8} {:<10} {port:<8} {initiator:<24} {reg}",
                f.name,
                f.state,
                f.hctl.as_deref().unwrap_or("?")
            );
            if p.holder {
                line.push_str(", holds the reservation");
            }
            match p.matched_on {
                Some(MatchedOn::Nexus) | None => {}
                Some(on) => {
                    let _ = write!(line, " (matched on {})", on.name());
                }
            }
            if !p.judged {
                line.push_str(" [not judged]");
            }
            let _ = writeln!(out, "{}", line.trim_end());
            if let Err(why) = &f.status {
                let _ = writeln!(out, "         READ FULL STATUS: {why}");
            }
            if let Err(why) = &f.target_port {
                let _ = writeln!(out, "         target port unknown: {why}");
            }
            if let Err(why) = &f.initiator {
                let _ = writeln!(out, "         initiator unknown: {why}");
            }
        }
        match &self.reservation {
            None => {
                let _ = writeln!(out, "  reservation: none");
            }
            Some(r) => {
                let key = match r.key {
                    Some(k) => format!("key 0x{k:x}"),
                    None => "all registrants".into(),
                };
                let mut by = Vec::new();
                if !r.map_holders.is_empty() {
                    let names: Vec<&str> = r.map_holders.iter().map(String::as_str).collect();
                    by.push(format!("through {}", and_list(&names)));
                }
                if r.other_holders > 0 {
                    by.push(format!("{} other nexus(es)", r.other_holders));
                }
                let _ = writeln!(
                    out,
                    "  reservation: {key}, type {} ({}){}{}",
                    r.pr_type,
                    pr::pr_type::name(r.pr_type),
                    if r.scope == 0 { "" } else { ", scope not LU" },
                    if by.is_empty() {
                        String::new()
                    } else {
                        format!(", held {}", by.join(" and "))
                    }
                );
            }
        }
        if self.others.is_empty() {
            let _ = writeln!(out, "  other nexuses: no registrations");
        } else {
            let _ = writeln!(
                out,
                "  other nexuses: {} registration{}",
                self.others.len(),
                if self.others.len() == 1 { "" } else { "s" }
            );
            for r in &self.others {
                let _ = writeln!(
                    out,
                    "    key 0x{:x} {} port {}{}{}",
                    r.key,
                    describe_tid(&r.transport_id),
                    r.relative_target_port,
                    if r.all_tg_pt {
                        " (all target ports)"
                    } else {
                        ""
                    },
                    if r.holder { ", holder" } else { "" }
                );
            }
        }
        let verdict = match self.verdict {
            Verdict::Consistent => "consistent",
            Verdict::Disagree => "DISAGREE",
            Verdict::Undetermined => "UNDETERMINED",
        };
        if self.reasons.is_empty() {
            let summary = match self.paths.iter().find(|p| p.judged).map(|p| &p.registered) {
                Some(Registered::Key(k)) => format!("every active path holds 0x{k:x}"),
                _ => "no active path registered".into(),
            };
            let _ = writeln!(out, "  verdict: {verdict} ({summary})");
        } else {
            let _ = writeln!(out, "  verdict: {verdict}: {}", self.reasons.join("; "));
        }
        out
    }

    /// The JSON output: one object on one line.
    pub fn json(&self) -> String {
        use serde::Serialize;

        #[derive(Serialize)]
        struct Json<'a> {
            map: &'a str,
            dm: &'a str,
            name: &'a str,
            uuid: &'a str,
            generation: u32,
            status_from: &'a str,
            paths: Vec<Path<'a>>,
            reservation: Option<Reservation>,
            other_registrations: Vec<Other>,
            verdict: &'static str,
            reasons: &'a [String],
        }
        #[derive(Serialize)]
        struct Path<'a> {
            name: &'a str,
            state: &'a str,
            hctl: Option<&'a str>,
            target_port: Option<u16>,
            initiator: Option<String>,
            /// `true`/`false`, `null` when unknown.
            registered: Option<bool>,
            key: Option<String>,
            holder: bool,
            matched_on: Option<&'static str>,
            judged: bool,
            /// Why something about the path is unknown or failed.
            notes: Vec<String>,
        }
        #[derive(Serialize)]
        struct Reservation {
            key: Option<String>,
            #[serde(rename = "type")]
            pr_type: u8,
            type_name: &'static str,
            scope: u8,
            map_holders: Vec<String>,
            other_holders: usize,
        }
        #[derive(Serialize)]
        struct Other {
            key: String,
            initiator: Option<String>,
            transport_id: String,
            relative_target_port: u16,
            all_tg_pt: bool,
            holder: bool,
        }

        let paths = self
            .paths
            .iter()
            .map(|p| {
                let f = &p.facts;
                let mut notes = Vec::new();
                if let Err(why) = &f.status {
                    notes.push(format!("READ FULL STATUS: {why}"));
                }
                if let Err(why) = &f.target_port {
                    notes.push(format!("target port: {why}"));
                }
                if let Err(why) = &f.initiator {
                    notes.push(format!("initiator: {why}"));
                }
                if let Registered::Unknown(why) = &p.registered {
                    notes.push(why.clone());
                }
                Path {
                    name: &f.name,
                    state: &f.state,
                    hctl: f.hctl.as_deref(),
                    target_port: f.target_port.as_ref().ok().copied(),
                    initiator: f.initiator.as_ref().ok().map(ToString::to_string),
                    registered: match p.registered {
                        Registered::Key(_) => Some(true),
                        Registered::No => Some(false),
                        Registered::Unknown(_) => None,
                    },
                    key: match p.registered {
                        Registered::Key(k) => Some(format!("0x{k:x}")),
                        _ => None,
                    },
                    holder: p.holder,
                    matched_on: p.matched_on.map(MatchedOn::name),
                    judged: p.judged,
                    notes,
                }
            })
            .collect();
        let json = Json {
            map: &self.map.given,
            dm: &self.map.dm,
            name: &self.map.name,
            uuid: &self.map.uuid,
            generation: self.status.generation,
            status_from: &self.status_from,
            paths,
            reservation: self.reservation.as_ref().map(|r| Reservation {
                key: r.key.map(|k| format!("0x{k:x}")),
                pr_type: r.pr_type,
                type_name: pr::pr_type::name(r.pr_type),
                scope: r.scope,
                map_holders: r.map_holders.clone(),
                other_holders: r.other_holders,
            }),
            other_registrations: self
                .others
                .iter()
                .map(|r| Other {
                    key: format!("0x{:x}", r.key),
                    initiator: TransportId::parse(&r.transport_id).map(|t| t.to_string()),
                    transport_id: hex(&r.transport_id),
                    relative_target_port: r.relative_target_port,
                    all_tg_pt: r.all_tg_pt,
                    holder: r.holder,
                })
                .collect(),
            verdict: self.verdict.name(),
            reasons: &self.reasons,
        };
        // Plain structs with string keys: serialising cannot fail.
        serde_json::to_string(&json).unwrap_or_default()
    }
}

/// Where sysfs (and configfs, below it) is: `/` on a real system, a
/// directory of fixtures in the tests.
#[derive(Debug, Clone)]
pub struct Sys {
    root: PathBuf,
}

impl Default for Sys {
    fn default() -> Self {
        Sys { root: "/".into() }
    }
}

impl Sys {
    /// sysfs under `root` (`root`/sys/...).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sys { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// A sysfs attribute, trimmed.
    fn read(&self, rel: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(rel)).map(|s| s.trim().to_string())
    }

    /// The last component of a symlink's target.
    fn link_name(&self, rel: &str) -> Option<String> {
        let target = std::fs::read_link(self.path(rel)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Entry names of a directory, sorted by length then name (sdb before
    /// sdaa, as the kernel numbers them), or nothing.
    fn entries(&self, rel: &str) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        Ok(names)
    }
}

/// Resolves the map argument to its dm-N, and refuses anything that is not
/// a multipath map.
pub fn resolve_map(sys: &Sys, given: &Path) -> Result<MapInfo, PathsError> {
    // A bare name is a /dev/mapper name.
    let path = if given.components().count() == 1 && !given.starts_with("/") {
        Path::new("/dev/mapper").join(given)
    } else {
        given.to_path_buf()
    };
    let meta = std::fs::metadata(&path).map_err(|source| PathsError::Stat {
        path: path.clone(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(PathsError::NotBlockDevice(path));
    }
    let rdev = meta.rdev();
    map_of_device(sys, &path, given, libc::major(rdev), libc::minor(rdev))
}

/// The map behind block device MAJOR:MINOR (`path`, as `given`), from
/// sysfs: /sys/dev/block/MAJ:MIN names the kernel device, dm/uuid says
/// whether multipath owns it.
fn map_of_device(
    sys: &Sys,
    path: &Path,
    given: &Path,
    major: u32,
    minor: u32,
) -> Result<MapInfo, PathsError> {
    let path = path.to_path_buf();
    let dev = sys
        .link_name(&format!("sys/dev/block/{major}:{minor}"))
        .unwrap_or_else(|| format!("{major}:{minor}"));
    if !dev.starts_with("dm-") {
        return Err(PathsError::NotDeviceMapper { path, dev });
    }
    let uuid_file = format!("sys/block/{dev}/dm/uuid");
    let uuid = sys
        .read(&uuid_file)
        .map_err(|e| PathsError::Sysfs(sys.path(&uuid_file), e))?;
    if !uuid.starts_with("mpath-") {
        return Err(PathsError::NotMultipath {
            path,
            dm: dev,
            uuid,
        });
    }
    let name = sys
        .read(&format!("sys/block/{dev}/dm/name"))
        .unwrap_or_default();
    Ok(MapInfo {
        given: given.display().to_string(),
        dm: dev,
        name,
        uuid,
    })
}

/// The map's paths: the slaves of dm-N.
pub fn map_paths(sys: &Sys, map: &MapInfo) -> Result<Vec<String>, PathsError> {
    let rel = format!("sys/block/{}/slaves", map.dm);
    let paths = sys
        .entries(&rel)
        .map_err(|e| PathsError::Sysfs(sys.path(&rel), e))?;
    if paths.is_empty() {
        return Err(PathsError::NoPaths(map.dm.clone()));
    }
    Ok(paths)
}

/// Host, channel, target of "H:C:T:L".
fn hct(hctl: &str) -> Option<(u32, u32, u32)> {
    let mut f = hctl.split(':').map(|n| n.parse::<u32>().ok());
    Some((f.next()??, f.next()??, f.next()??))
}

/// A hexadecimal port name as sysfs and LIO write them ("0x" and ':'
/// optional).
fn hex_name(s: &str) -> Option<u64> {
    let digits: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(&digits, 16).ok()
}

/// The initiator port of a LIO loopback (tcm_loop) path: the target whose
/// `address` (H:C:T, tcm_loop's host number, channel 0, the TPG tag) is the
/// path's, and that target's `nexus` (the initiator port name). The
/// TransportID protocol is the target WWN's (tcm_loop: `naa.` SAS, `fc.`
/// FCP, `iqn.` iSCSI), as LIO builds the TransportIDs it reports.
/// `None`: no loopback target has this address.
fn tcm_loop_initiator(sys: &Sys, hctl: &str) -> Option<Result<TransportId, String>> {
    let (h, c, t) = hct(hctl)?;
    let base = "sys/kernel/config/target/loopback";
    for wwn in sys.entries(base).ok()? {
        for tpg in sys
            .entries(&format!("{base}/{wwn}"))
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.starts_with("tpgt_"))
        {
            let dir = format!("{base}/{wwn}/{tpg}");
            let Ok(address) = sys.read(&format!("{dir}/address")) else {
                continue;
            };
            if address
                .split(':')
                .map(|n| n.parse::<u32>().ok())
                .collect::<Vec<_>>()
                != [Some(h), Some(c), Some(t)]
            {
                continue;
            }
            let nexus = sys.read(&format!("{dir}/nexus")).unwrap_or_default();
            let lower = nexus.to_ascii_lowercase();
            let tid = if nexus.is_empty() {
                Err(format!("LIO loopback target {wwn}/{tpg} has no nexus"))
            } else if wwn.starts_with("naa.") {
                hex_name(lower.trim_start_matches("naa."))
                    .map(TransportId::Sas)
                    .ok_or_else(|| format!("LIO loopback nexus {nexus:?} is no SAS address"))
            } else if wwn.starts_with("fc.") {
                hex_name(lower.trim_start_matches("fc."))
                    .map(TransportId::Fc)
                    .ok_or_else(|| format!("LIO loopback nexus {nexus:?} is no FC port name"))
            } else if wwn.starts_with("iqn.") {
                Ok(TransportId::Iscsi(lower))
            } else {
                Err(format!("LIO loopback target {wwn}: unknown protocol"))
            };
            return Some(tid);
        }
    }
    None
}

/// The initiator port of path `name` at `hctl`, from sysfs, per transport.
fn initiator(sys: &Sys, name: &str, hctl: Option<&str>) -> Result<TransportId, String> {
    let hctl = hctl.ok_or("no SCSI address in sysfs")?;
    let (h, _, _) = hct(hctl).ok_or_else(|| format!("bad SCSI address {hctl:?}"))?;
    if let Some(tid) = tcm_loop_initiator(sys, hctl) {
        return tid;
    }
    if let Ok(port) = sys.read(&format!("sys/class/fc_host/host{h}/port_name")) {
        return hex_name(&port)
            .map(TransportId::Fc)
            .ok_or_else(|| format!("host{h}: FC port_name {port:?} unreadable"));
    }
    // iSCSI: the session directory is an ancestor of the SCSI device.
    let session = std::fs::canonicalize(sys.path(&format!("sys/block/{name}/device")))
        .ok()
        .and_then(|p| {
            p.iter()
                .map(|c| c.to_string_lossy().into_owned())
                .find(|c| c.starts_with("session"))
        });
    let iscsi = session
        .map(|s| format!("sys/class/iscsi_session/{s}/initiatorname"))
        .into_iter()
        .chain([format!("sys/class/iscsi_host/host{h}/initiatorname")]);
    for file in iscsi {
        if let Ok(name) = sys.read(&file) {
            if !name.is_empty() && name != "(null)" {
                return Ok(TransportId::Iscsi(name.to_ascii_lowercase()));
            }
        }
    }
    // SAS: mpt3sas and others give the HBA's address; otherwise its phys'.
    if let Ok(addr) = sys.read(&format!("sys/class/scsi_host/host{h}/host_sas_address")) {
        if let Some(a) = hex_name(&addr) {
            return Ok(TransportId::Sas(a));
        }
    }
    let prefix = format!("phy-{h}:");
    for phy in sys
        .entries("sys/class/sas_phy")
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.starts_with(&prefix))
    {
        if let Some(a) = sys
            .read(&format!("sys/class/sas_phy/{phy}/sas_address"))
            .ok()
            .and_then(|a| hex_name(&a))
        {
            return Ok(TransportId::Sas(a));
        }
    }
    let driver = sys
        .read(&format!("sys/class/scsi_host/host{h}/proc_name"))
        .unwrap_or_else(|_| "unknown".into());
    Err(format!(
        "host{h} (driver {driver}) shows no LIO loopback nexus, FC port name, iSCSI initiator \
         name or SAS address"
    ))
}

/// An errno in words, with the privilege hint where it is a privilege
/// problem.
fn errno_text(errno: i32) -> String {
    let e = io::Error::from_raw_os_error(errno);
    if matches!(errno, libc::EPERM | libc::EACCES) {
        format!("{e}: SG_IO on a path device needs root (CAP_SYS_RAWIO)")
    } else {
        e.to_string()
    }
}

/// Sends a data-in command, again after a UNIT ATTENTION (reported once per
/// nexus after a PREEMPT, a CLEAR, a reset: the next command gets the real
/// answer), up to four times. Returns the data the device sent.
fn data_in(device: &File, cdb: &[u8], len: usize, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for _ in 0..4 {
        let mut buf = vec![0u8; len];
        let outcome = sgio::execute(
            device.as_fd(),
            cdb,
            DataPhase::FromDevice(&mut buf),
            timeout,
        )
        .map_err(|errno| format!("SG_IO: {}", errno_text(errno)))?;
        let c = scsi::complete(Ok(outcome), buf.len());
        if c.status == status::GOOD {
            buf.truncate(c.transferred);
            return Ok(buf);
        }
        last = describe_status(u32::from(c.status), &c.sense);
        if c.sense_code().map(|s| s.key) != Some(0x06) {
            break;
        }
    }
    Err(last)
}

/// READ FULL STATUS through `device`, with an allocation length grown to
/// what the ADDITIONAL LENGTH asks for (once; at most the CDB's 65535).
fn read_full_status(device: &File, timeout: Duration) -> Result<FullStatus, String> {
    let mut len: u16 = 8192;
    loop {
        let cdb = pr_in_cdb(sa_in::READ_FULL_STATUS, len);
        let data = data_in(device, &cdb, usize::from(len), timeout)?;
        let full = decode::full_status(&data).map_err(|e| e.to_string())?;
        let needed = data
            .get(4..8)
            .map(|b| 8 + u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0);
        if needed > usize::from(len) && len < u16::MAX {
            len = u16::try_from(needed).unwrap_or(u16::MAX);
            continue;
        }
        return Ok(full);
    }
}

/// The path's relative target port: from sysfs's copy of VPD page 0x83
/// (readable with the path offline), else an INQUIRY through the path.
fn target_port(
    sys: &Sys,
    name: &str,
    device: Option<&File>,
    timeout: Duration,
) -> Result<u16, String> {
    let page = match std::fs::read(sys.path(&format!("sys/block/{name}/device/vpd_pg83"))) {
        Ok(page) => page,
        Err(_) => {
            let device = device.ok_or("no VPD page 0x83 in sysfs and the device is not open")?;
            let cdb = vpd::inquiry_vpd_cdb(vpd::DEVICE_IDENTIFICATION, 4096);
            data_in(device, &cdb, 4096, timeout).map_err(|e| format!("INQUIRY VPD 0x83: {e}"))?
        }
    };
    match vpd::relative_target_port(&page) {
        Ok(Some(port)) => Ok(port),
        Ok(None) => Err("VPD page 0x83 names no relative target port".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Everything about path `name`: sysfs first, then the device.
pub fn path_facts(sys: &Sys, name: &str, timeout: Duration) -> PathFacts {
    let state = sys
        .read(&format!("sys/block/{name}/device/state"))
        .unwrap_or_else(|_| "unknown".into());
    let hctl = sys.link_name(&format!("sys/block/{name}/device"));
    let initiator = initiator(sys, name, hctl.as_deref());
    let dev = Path::new("/dev").join(name);
    // O_NONBLOCK: a removable or not-ready device opens anyway; the
    // commands say what is wrong.
    let device = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&dev)
        .map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => " (needs root)",
                Some(libc::ENXIO) => " (the path is offline)",
                _ => "",
            };
            format!("cannot open {}: {e}{hint}", dev.display())
        });
    let target_port = target_port(sys, name, device.as_ref().ok(), timeout);
    let status = device.and_then(|d| read_full_status(&d, timeout));
    PathFacts {
        name: name.to_string(),
        state,
        hctl,
        target_port,
        initiator,
        status,
    }
}

/// Looks at the map behind `given` and every path of it.
pub fn gather(sys: &Sys, given: &Path, timeout: Duration) -> Result<Report, PathsError> {
    let map = resolve_map(sys, given)?;
    let paths = map_paths(sys, &map)?
        .iter()
        .map(|name| path_facts(sys, name, timeout))
        .collect();
    judge(map, paths)
}

/// Runs `pr-helper paths`.
pub fn paths(args: &PathsArgs) -> ExitCode {
    let timeout = Duration::from_secs(args.timeout.max(1));
    match gather(&Sys::default(), &args.map, timeout) {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            ExitCode::from(report.verdict.exit_code())
        }
        Err(e) => {
            eprintln!("pr-helper: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::pr::{fc_transport_id, iscsi_transport_id, sas_transport_id};

    const KEY: u64 = 0x00c0_ffee_0000_0a11;
    const A: u64 = 0x5001405bbbbbbbb1;
    const B: u64 = 0x5001405bbbbbbbb2;
    const SOURCE: u64 = 0x5001405bbbbbbbb3;

    /// One READ FULL STATUS descriptor, as a device sends it.
    fn desc(key: u64, holder_type: Option<u8>, all_tg_pt: bool, port: u16, tid: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..8].copy_from_slice(&key.to_be_bytes());
        d[12] = u8::from(all_tg_pt) << 1 | u8::from(holder_type.is_some());
        d[13] = holder_type.unwrap_or(0);
        d[18..20].copy_from_slice(&port.to_be_bytes());
        d[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        d.extend_from_slice(tid);
        d
    }

    /// READ FULL STATUS data with these descriptors, decoded.
    fn full(generation: u32, descs: &[Vec<u8>]) -> FullStatus {
        let body = descs.concat();
        let mut data = generation.to_be_bytes().to_vec();
        data.extend_from_slice(&(body.len() as u32).to_be_bytes());
        data.extend_from_slice(&body);
        decode::full_status(&data).unwrap()
    }

    fn path(name: &str, sas: u64, port: u16, status: &FullStatus) -> PathFacts {
        PathFacts {
            name: name.into(),
            state: "running".into(),
            hctl: Some(format!("{port}:0:1:0")),
            target_port: Ok(port),
            initiator: Ok(TransportId::Sas(sas)),
            status: Ok(status.clone()),
        }
    }

    fn map() -> MapInfo {
        MapInfo {
            given: "/dev/dm-3".into(),
            dm: "dm-3".into(),
            name: "mpatha".into(),
            uuid: "mpath-36001405prhflows0000".into(),
        }
    }

    /// The test bed's map after libmpathpersist 0.9.4's migrate hand-over:
    /// the preempting path (B) holds the key and the reservation, A lost it.
    fn one_path_lost() -> FullStatus {
        full(9, &[desc(KEY, Some(5), false, 2, &sas_transport_id(B))])
    }

    #[test]
    fn a_path_that_lost_its_registration_is_named() {
        let s = one_path_lost();
        let r = judge(map(), vec![path("sdb", A, 1, &s), path("sdc", B, 2, &s)]).unwrap();
        assert_eq!(r.verdict, Verdict::Disagree);
        assert_eq!(r.verdict.exit_code(), 3);
        assert_eq!(
            r.reasons,
            ["sdb not registered while sdc holds 0xc0ffee00000a11"]
        );
        assert_eq!(r.paths[0].registered, Registered::No);
        assert_eq!(r.paths[1].registered, Registered::Key(KEY));
        assert!(r.paths[1].holder && !r.paths[0].holder);
        assert_eq!(
            r.reservation,
            Some(ReservationView {
                key: Some(KEY),
                pr_type: 5,
                scope: 0,
                map_holders: vec!["sdc".into()],
                other_holders: 0
            })
        );
        assert!(r.others.is_empty());
        let text = r.text();
        assert!(
            text.contains(
                "sdb    running  1:0:1:0    port 1   sas 0x5001405bbbbbbbb1   not registered\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("key 0xc0ffee00000a11, holds the reservation\n"),
            "{text}"
        );
        assert!(text.contains("reservation: key 0xc0ffee00000a11, type 5 (Write Exclusive, registrants only), held through sdc"), "{text}");
        assert!(
            text.ends_with(
                "verdict: DISAGREE: sdb not registered while sdc holds 0xc0ffee00000a11\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn both_paths_registered_is_consistent_and_other_hosts_are_listed() {
        let s = full(
            4,
            &[
                desc(KEY, Some(5), false, 1, &sas_transport_id(A)),
                desc(KEY, Some(5), false, 2, &sas_transport_id(B)),
                desc(0xb22, Some(5), false, 3, &sas_transport_id(SOURCE)),
            ],
        );
        let r = judge(map(), vec![path("sdb", A, 1, &s), path("sdc", B, 2, &s)]).unwrap();
        assert_eq!(r.verdict, Verdict::Consistent);
        assert_eq!(r.verdict.exit_code(), 0);
        assert!(r.reasons.is_empty());
        assert_eq!(r.others.len(), 1);
        assert_eq!(r.others[0].key, 0xb22);
        let res = r.reservation.as_ref().unwrap();
        assert_eq!(res.map_holders, ["sdb", "sdc"]);
        assert_eq!(res.other_holders, 1);
        let text = r.text();
        assert!(text.contains("other nexuses: 1 registration\n    key 0xb22 sas 0x5001405bbbbbbbb3 port 3, holder\n"), "{text}");
        assert!(
            text.ends_with("verdict: consistent (every active path holds 0xc0ffee00000a11)\n"),
            "{text}"
        );
        // Nothing registered through the map at all: consistent too.
        let s = full(1, &[desc(0xb22, None, false, 3, &sas_transport_id(SOURCE))]);
        let r = judge(map(), vec![path("sdb", A, 1, &s), path("sdc", B, 2, &s)]).unwrap();
        assert_eq!(r.verdict, Verdict::Consistent);
        assert!(r
            .text()
            .ends_with("verdict: consistent (no active path registered)\n"));
    }

    #[test]
    fn different_keys_on_the_paths_disagree() {
        let s = full(
            2,
            &[
                desc(1, None, false, 1, &sas_transport_id(A)),
                desc(2, None, false, 2, &sas_transport_id(B)),
            ],
        );
        let r = judge(map(), vec![path("sdb", A, 1, &s), path("sdc", B, 2, &s)]).unwrap();
        assert_eq!(r.verdict, Verdict::Disagree);
        assert_eq!(r.reasons, ["different keys: sdb 0x1, sdc 0x2"]);
    }

    #[test]
    fn the_nexus_is_initiator_and_target_port() {
        // The same initiator registered through another target port only:
        // not this path's registration.
        let s = full(3, &[desc(KEY, None, false, 7, &sas_transport_id(A))]);
        let r = judge(map(), vec![path("sdb", A, 1, &s)]).unwrap();
        assert_eq!(r.paths[0].registered, Registered::No);
        assert_eq!(r.others.len(), 1);
        // ALL_TG_PT: registered on every port of the device.
        let s = full(3, &[desc(KEY, None, true, 0, &sas_transport_id(A))]);
        let r = judge(map(), vec![path("sdb", A, 1, &s), path("sdd", A, 2, &s)]).unwrap();
        assert_eq!(r.verdict, Verdict::Consistent);
        assert!(r.paths.iter().all(|p| p.registered == Registered::Key(KEY)));
        assert!(r.others.is_empty());
    }

    #[test]
    fn paths_that_are_not_running_are_shown_not_judged() {
        let s = one_path_lost();
        let mut down = path("sdb", A, 1, &s);
        down.state = "offline".into();
        down.status =
            Err("cannot open /dev/sdb: No such device or address (the path is offline)".into());
        let r = judge(map(), vec![down, path("sdc", B, 2, &s)]).unwrap();
        assert_eq!(r.verdict, Verdict::Consistent);
        assert_eq!(r.paths[0].registered, Registered::No);
        assert!(!r.paths[0].judged);
        let text = r.text();
        assert!(
            text.contains("not registered [not judged]\n         READ FULL STATUS: cannot open"),
            "{text}"
        );
        assert_eq!(r.status_from, "sdc");
    }

    #[test]
    fn a_running_path_that_does_not_answer_leaves_the_verdict_open() {
        let s = one_path_lost();
        let mut mute = path("sdc", B, 2, &s);
        mute.status = Err("SG_IO: Operation not permitted".into());
        let both = full(
            4,
            &[
                desc(KEY, None, false, 1, &sas_transport_id(A)),
                desc(KEY, None, false, 2, &sas_transport_id(B)),
            ],
        );
        let r = judge(map(), vec![path("sdb", A, 1, &both), mute]).unwrap();
        assert_eq!(r.verdict, Verdict::Undetermined);
        assert_eq!(r.verdict.exit_code(), 4);
        assert_eq!(
            r.reasons,
            ["sdc is running but READ FULL STATUS failed: SG_IO: Operation not permitted"]
        );
    }

    #[test]
    fn paths_that_see_different_registrations_disagree() {
        let both = full(
            4,
            &[
                desc(KEY, None, false, 1, &sas_transport_id(A)),
                desc(KEY, None, false, 2, &sas_transport_id(B)),
            ],
        );
        let r = judge(
            map(),
            vec![
                path("sdb", A, 1, &both),
                path("sdc", B, 2, &one_path_lost()),
            ],
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::Disagree);
        assert!(
            r.reasons[0].starts_with("sdc reports other registrations than sdb (1 vs 2"),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn an_unknown_initiator_matches_on_the_target_port_and_says_so() {
        let s = one_path_lost();
        let mut a = path("sdb", A, 1, &s);
        let mut b = path("sdc", B, 2, &s);
        a.initiator = Err("host1 (driver xyz) shows no ...".into());
        b.initiator = Err("host2 (driver xyz) shows no ...".into());
        let r = judge(map(), vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(r.verdict, Verdict::Disagree);
        assert_eq!(r.paths[1].registered, Registered::Key(KEY));
        assert_eq!(r.paths[1].matched_on, Some(MatchedOn::TargetPort));
        let text = r.text();
        assert!(text.contains("initiator unknown        key 0xc0ffee00000a11, holds the reservation (matched on target port only)\n"), "{text}");
        assert!(
            text.contains("         initiator unknown: host2 (driver xyz) shows no ...\n"),
            "{text}"
        );
        // With an ALL_TG_PT registration about, the port proves nothing.
        let s = full(5, &[desc(KEY, None, true, 0, &sas_transport_id(SOURCE))]);
        a.status = Ok(s.clone());
        b.status = Ok(s);
        let r = judge(map(), vec![a.clone(), b]).unwrap();
        assert_eq!(r.verdict, Verdict::Undetermined);
        assert!(matches!(r.paths[0].registered, Registered::Unknown(_)));
        // Neither known.
        a.target_port = Err("VPD page 0x83 names no relative target port".into());
        let r = judge(map(), vec![a]).unwrap();
        assert_eq!(r.verdict, Verdict::Undetermined);
        assert_eq!(r.paths[0].matched_on, None);
    }

    #[test]
    fn iscsi_and_fc_initiators_match_their_transport_ids() {
        // iSCSI format 1 (name,i,0xISID) against the name sysfs gives.
        let name = b"iqn.1994-05.com.example:Host1,i,0x23d000000001\0\0";
        let mut f1 = vec![0x45, 0, 0, name.len() as u8];
        f1.extend_from_slice(name);
        let s = full(
            1,
            &[
                desc(KEY, None, false, 1, &f1),
                desc(KEY, None, false, 2, &fc_transport_id(0x2100_0024_ff4b_2c2e)),
                desc(
                    9,
                    None,
                    false,
                    1,
                    &iscsi_transport_id("iqn.1994-05.com.example:other"),
                ),
            ],
        );
        let mut a = path("sdb", 0, 1, &s);
        a.initiator = Ok(TransportId::Iscsi("iqn.1994-05.com.example:host1".into()));
        let mut b = path("sdc", 0, 2, &s);
        b.initiator = Ok(TransportId::Fc(0x2100_0024_ff4b_2c2e));
        let r = judge(map(), vec![a, b]).unwrap();
        assert_eq!(r.verdict, Verdict::Consistent);
        assert_eq!(r.others.len(), 1);
        assert!(r
            .text()
            .contains("    key 0x9 iscsi iqn.1994-05.com.example:other port 1\n"));
    }

    #[test]
    fn all_registrants_reservations_have_every_registrant_as_holder() {
        let s = full(
            6,
            &[
                desc(KEY, Some(7), false, 1, &sas_transport_id(A)),
                desc(KEY, Some(7), false, 2, &sas_transport_id(B)),
            ],
        );
        let r = judge(map(), vec![path("sdb", A, 1, &s), path("sdc", B, 2, &s)]).unwrap();
        let res = r.reservation.as_ref().unwrap();
        assert_eq!((res.key, res.pr_type), (None, 7));
        assert_eq!(res.map_holders, ["sdb", "sdc"]);
        assert!(r.text().contains("reservation: all registrants, type 7 (Write Exclusive, all registrants), held through sdb and sdc\n"));
    }

    #[test]
    fn no_answer_at_all_is_an_error() {
        let mut a = path("sdb", A, 1, &one_path_lost());
        a.status = Err(
            "SG_IO: Operation not permitted: SG_IO on a path device needs root (CAP_SYS_RAWIO)"
                .into(),
        );
        let e = judge(map(), vec![a]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no path of dm-3 answered READ FULL STATUS: sdb: SG_IO: Operation not permitted: \
             SG_IO on a path device needs root (CAP_SYS_RAWIO)"
        );
        assert_eq!(
            judge(map(), vec![]).unwrap_err().to_string(),
            "dm-3 has no paths"
        );
    }

    #[test]
    fn json_shape() {
        let s = full(
            9,
            &[
                desc(KEY, Some(5), false, 2, &sas_transport_id(B)),
                desc(0xb22, None, false, 3, &sas_transport_id(SOURCE)),
            ],
        );
        let mut a = path("sdb", A, 1, &s);
        a.initiator = Err("no nexus".into());
        let r = judge(map(), vec![a, path("sdc", B, 2, &s)]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        let want = serde_json::json!({
            "map": "/dev/dm-3", "dm": "dm-3", "name": "mpatha",
            "uuid": "mpath-36001405prhflows0000", "generation": 9, "status_from": "sdb",
            "paths": [
                {"name": "sdb", "state": "running", "hctl": "1:0:1:0", "target_port": 1,
                 "initiator": null, "registered": false, "key": null, "holder": false,
                 "matched_on": "target port only", "judged": true,
                 "notes": ["initiator: no nexus"]},
                {"name": "sdc", "state": "running", "hctl": "2:0:1:0", "target_port": 2,
                 "initiator": "sas 0x5001405bbbbbbbb2", "registered": true,
                 "key": "0xc0ffee00000a11", "holder": true, "matched_on": "nexus",
                 "judged": true, "notes": []}
            ],
            "reservation": {"key": "0xc0ffee00000a11", "type": 5,
                            "type_name": "Write Exclusive, registrants only", "scope": 0,
                            "map_holders": ["sdc"], "other_holders": 0},
            "other_registrations": [
                {"key": "0xb22", "initiator": "sas 0x5001405bbbbbbbb3",
                 "transport_id": hex(&sas_transport_id(SOURCE)), "relative_target_port": 3,
                 "all_tg_pt": false, "holder": false}
            ],
            "verdict": "disagree",
            "reasons": ["sdb not registered while sdc holds 0xc0ffee00000a11"]
        });
        assert_eq!(v, want);
        assert!(!r.json().contains('\n'));
        // No reservation: null.
        let s = full(1, &[]);
        let r = judge(map(), vec![path("sdb", A, 1, &s)]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["reservation"], serde_json::Value::Null);
        assert_eq!(v["verdict"], "consistent");
    }

    /// A sysfs tree in a temporary directory.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn sys(&self) -> Sys {
            Sys::new(self.dir.path())
        }
        fn file(&self, rel: &str, content: &str) {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        fn link(&self, rel: &str, target: &str) {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
    }

    #[test]
    fn maps_are_recognised_by_their_dm_uuid() {
        let f = Fixture::new();
        f.link("sys/dev/block/253:3", "../../devices/virtual/block/dm-3");
        f.file("sys/block/dm-3/dm/uuid", "mpath-36001405prhflows0000\n");
        f.file("sys/block/dm-3/dm/name", "mpatha\n");
        f.link("sys/dev/block/253:4", "../../devices/virtual/block/dm-4");
        f.file("sys/block/dm-4/dm/uuid", "LVM-abc\n");
        f.link(
            "sys/dev/block/8:16",
            "../../devices/pci0000:00/host2/target2:0:1/2:0:1:0/block/sdb",
        );
        for name in ["sdaa", "sdc", "sdb"] {
            f.link(&format!("sys/block/dm-3/slaves/{name}"), "../../sdb");
        }
        let sys = f.sys();
        let p = Path::new("/dev/mapper/mpatha");
        let m = map_of_device(&sys, p, p, 253, 3).unwrap();
        assert_eq!(
            m,
            MapInfo {
                given: "/dev/mapper/mpatha".into(),
                ..map()
            }
            .with_dm("dm-3")
        );
        assert_eq!(map_paths(&sys, &m).unwrap(), ["sdb", "sdc", "sdaa"]);
        let e = map_of_device(&sys, p, p, 253, 4).unwrap_err();
        assert!(matches!(e, PathsError::NotMultipath { .. }));
        assert!(
            e.to_string()
                .contains("dm-4 is not a multipath map (device-mapper uuid \"LVM-abc\""),
            "{e}"
        );
        let e = map_of_device(&sys, p, p, 8, 16).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/mapper/mpatha: sdb is not a device-mapper device"
        );
        let e = map_of_device(&sys, p, p, 7, 7).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/mapper/mpatha: 7:7 is not a device-mapper device"
        );
        // Not a block device at all.
        let e = resolve_map(&sys, Path::new("/dev/null")).unwrap_err();
        assert_eq!(e.to_string(), "/dev/null: not a block device");
        let e = resolve_map(&sys, Path::new("no-such-map-here")).unwrap_err();
        assert!(
            e.to_string().starts_with("/dev/mapper/no-such-map-here: "),
            "{e}"
        );
        // A map without slaves.
        f.file("sys/block/dm-4/slaves/.keep", "");
        std::fs::remove_file(f.dir.path().join("sys/block/dm-4/slaves/.keep")).unwrap();
        let m4 = MapInfo {
            dm: "dm-4".into(),
            ..map()
        };
        assert_eq!(
            map_paths(&sys, &m4).unwrap_err().to_string(),
            "dm-4 has no paths"
        );
    }

    impl MapInfo {
        fn with_dm(mut self, dm: &str) -> Self {
            self.dm = dm.into();
            self
        }
    }

    #[test]
    fn initiators_from_sysfs() {
        let f = Fixture::new();
        // LIO loopback: two targets on hosts 2 and 3, SAS naming.
        let lo = "sys/kernel/config/target/loopback";
        f.file(
            &format!("{lo}/naa.500140500000000001/tpgt_1/address"),
            "2:0:1\n",
        );
        f.file(
            &format!("{lo}/naa.500140500000000001/tpgt_1/nexus"),
            "naa.5001405bbbbbbbb1\n",
        );
        f.file(
            &format!("{lo}/naa.500140500000000002/tpgt_1/address"),
            "3:0:1\n",
        );
        f.file(&format!("{lo}/naa.500140500000000002/tpgt_1/nexus"), "");
        f.file(
            &format!("{lo}/iqn.2003-01.org.x:t/tpgt_2/address"),
            "4:0:2\n",
        );
        f.file(
            &format!("{lo}/iqn.2003-01.org.x:t/tpgt_2/nexus"),
            "iqn.1994-05.com.Example:h\n",
        );
        // Fibre Channel on host 5; iSCSI session on host 6; SAS on 7 and 8.
        f.file("sys/class/fc_host/host5/port_name", "0x21000024ff4b2c2e\n");
        f.file(
            "sys/devices/platform/host6/session3/target6:0:0/6:0:0:1/state",
            "running\n",
        );
        f.link(
            "sys/block/sdf/device",
            "../../devices/platform/host6/session3/target6:0:0/6:0:0:1",
        );
        f.file(
            "sys/class/iscsi_session/session3/initiatorname",
            "iqn.1993-08.org.debian:01:abc\n",
        );
        f.file(
            "sys/class/scsi_host/host7/host_sas_address",
            "0x500605b0000272b0\n",
        );
        f.file(
            "sys/class/sas_phy/phy-8:0/sas_address",
            "0x500605b0000272c0\n",
        );
        f.file("sys/class/scsi_host/host9/proc_name", "virtio_scsi\n");
        let sys = f.sys();
        assert_eq!(
            initiator(&sys, "sdb", Some("2:0:1:0")),
            Ok(TransportId::Sas(A))
        );
        assert_eq!(
            initiator(&sys, "sdc", Some("3:0:1:0")),
            Err("LIO loopback target naa.500140500000000002/tpgt_1 has no nexus".into())
        );
        assert_eq!(
            initiator(&sys, "sdd", Some("4:0:2:0")),
            Ok(TransportId::Iscsi("iqn.1994-05.com.example:h".into()))
        );
        assert_eq!(
            initiator(&sys, "sde", Some("5:0:0:1")),
            Ok(TransportId::Fc(0x21000024ff4b2c2e))
        );
        assert_eq!(
            initiator(&sys, "sdf", Some("6:0:0:1")),
            Ok(TransportId::Iscsi("iqn.1993-08.org.debian:01:abc".into()))
        );
        assert_eq!(
            initiator(&sys, "sdg", Some("7:0:0:0")),
            Ok(TransportId::Sas(0x500605b0000272b0))
        );
        assert_eq!(
            initiator(&sys, "sdh", Some("8:0:0:0")),
            Ok(TransportId::Sas(0x500605b0000272c0))
        );
        let e = initiator(&sys, "sdi", Some("9:0:0:0")).unwrap_err();
        assert!(e.starts_with("host9 (driver virtio_scsi) shows no"), "{e}");
        // Bad addresses: errors, no panics.
        for bad in ["", "x", "1:2", "a:b:c:d", "99999999999:0:0:0"] {
            assert!(initiator(&sys, "sdz", Some(bad)).is_err(), "{bad}");
        }
        assert!(initiator(&sys, "sdz", None).is_err());
    }

    #[test]
    fn target_ports_from_sysfs_vpd() {
        let f = Fixture::new();
        let page = [0x00, 0x83, 0x00, 0x08, 0x61, 0x94, 0x00, 0x04, 0, 0, 0, 2];
        let p = f.dir.path().join("sys/block/sdb/device/vpd_pg83");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, page).unwrap();
        let p = f.dir.path().join("sys/block/sdc/device/vpd_pg83");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &page[..10]).unwrap();
        let sys = f.sys();
        let t = Duration::from_secs(1);
        assert_eq!(target_port(&sys, "sdb", None, t), Ok(2));
        assert_eq!(
            target_port(&sys, "sdc", None, t),
            Err("VPD page 0x83 names no relative target port".into())
        );
        assert!(target_port(&sys, "sdd", None, t).is_err());
    }

    #[test]
    fn hex_names() {
        assert_eq!(hex_name("0x21000024ff4b2c2e"), Some(0x21000024ff4b2c2e));
        assert_eq!(
            hex_name("21:00:00:24:ff:4b:2c:2e"),
            Some(0x21000024ff4b2c2e)
        );
        assert_eq!(hex_name(""), None);
        assert_eq!(hex_name("0x"), None);
        assert_eq!(hex_name("zz"), None);
        assert_eq!(hex_name("0x1234567890abcdef0"), None);
    }
}
