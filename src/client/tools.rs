//! Client tools built into the binary: operators and tests need no other
//! program to talk to a helper.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};

use crate::client::{Client, Reply};
use crate::protocol::{CDB_SIZE, DEFAULT_SOCKET, SENSE_SIZE};
use crate::scsi::pr::{self, decode, flags, sa_in, sa_out};
use crate::scsi::{self, status, SenseCode};

/// `pr-helper ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Socket of the helper.
    #[arg(short = 'k', long = "socket", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub timeout: u64,
}

/// Connects, completes the handshake, and says so. The container HEALTHCHECK
/// and Kubernetes probes run this.
pub fn ping(args: &PingArgs) -> ExitCode {
    let start = Instant::now();
    let result = std::os::unix::net::UnixStream::connect(&args.socket).and_then(|stream| {
        let timeout = Some(Duration::from_secs(args.timeout.max(1)));
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Client::handshake(stream)
    });
    match result {
        Ok(client) => {
            println!(
                "pr-helper at {} is serving (features {:#010x}, handshake in {} us)",
                args.socket.display(),
                client.helper_features,
                start.elapsed().as_micros()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "pr-helper: no helper serving at {}: {e}",
                args.socket.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// `pr-helper persist`: one PERSISTENT RESERVE command through a running
/// helper, sent exactly as QEMU sends it (CDB with the device fd, parameter
/// list), the answer decoded like sg_persist does.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").required(true).args([
    "read_keys", "read_reservation", "report_capabilities", "read_full_status",
    "register", "register_ignore", "reserve", "release", "clear", "preempt",
    "preempt_abort", "register_move",
])))]
pub struct PersistArgs {
    /// Socket of the helper.
    #[arg(short = 'k', long = "socket", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The SCSI device (e.g. /dev/sdb or /dev/sg1); opened read-write unless --read-only.
    #[arg(short = 'd', long = "device", value_name = "DEV")]
    pub device: PathBuf,
    /// PR IN: READ KEYS.
    #[arg(long)]
    pub read_keys: bool,
    /// PR IN: READ RESERVATION.
    #[arg(long)]
    pub read_reservation: bool,
    /// PR IN: REPORT CAPABILITIES.
    #[arg(long)]
    pub report_capabilities: bool,
    /// PR IN: READ FULL STATUS.
    #[arg(long)]
    pub read_full_status: bool,
    /// PR OUT: REGISTER (--key current, --sa-key new; --sa-key 0 unregisters).
    #[arg(long)]
    pub register: bool,
    /// PR OUT: REGISTER AND IGNORE EXISTING KEY (--sa-key).
    #[arg(long)]
    pub register_ignore: bool,
    /// PR OUT: RESERVE (--key, --type).
    #[arg(long)]
    pub reserve: bool,
    /// PR OUT: RELEASE (--key, --type).
    #[arg(long)]
    pub release: bool,
    /// PR OUT: CLEAR (--key).
    #[arg(long)]
    pub clear: bool,
    /// PR OUT: PREEMPT (--key, --sa-key of the preempted, --type).
    #[arg(long)]
    pub preempt: bool,
    /// PR OUT: PREEMPT AND ABORT.
    #[arg(long)]
    pub preempt_abort: bool,
    /// PR OUT: REGISTER AND MOVE (--key, --sa-key, --type, --transport-id, --relative-target-port).
    #[arg(long)]
    pub register_move: bool,
    /// RESERVATION KEY (hex, 0x optional).
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u64, default_value = "0")]
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY (hex).
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u64, default_value = "0")]
    pub sa_key: u64,
    /// Reservation type: 1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR.
    #[arg(long = "type", value_name = "T", default_value_t = 0)]
    pub pr_type: u8,
    /// Scope (0 = LU).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub scope: u8,
    /// APTPL (persist through power loss).
    #[arg(long)]
    pub aptpl: bool,
    /// ALL_TG_PT (register on all target ports).
    #[arg(long)]
    pub all_tg_pt: bool,
    /// SPEC_I_PT (register the --transport-id initiators too).
    #[arg(long)]
    pub spec_i_pt: bool,
    /// TransportID: sas,HEXADDR | fcp,HEXNAME | an iSCSI name (iqn./eui./naa.) | hex,BYTES.
    #[arg(long = "transport-id", value_name = "TID", value_parser = parse_transport_id)]
    pub transport_ids: Vec<Vec<u8>>,
    /// REGISTER AND MOVE: relative target port identifier.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub relative_target_port: u16,
    /// REGISTER AND MOVE: UNREG.
    #[arg(long)]
    pub unreg: bool,
    /// PR IN allocation length.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub alloc_length: u16,
    /// Open the device read-only (PR OUT is then refused by the helper).
    #[arg(long)]
    pub read_only: bool,
    /// Print the reply as JSON.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Print the reply's wire bytes (status, length, sense, data) in hex.
    #[arg(long)]
    pub raw: bool,
}

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16).map_err(|_| format!("'{s}' is not a 64-bit hex number"))
}

/// Parses a TransportID in the forms `sas,HEX`, `fcp,HEX`, `hex,BYTES`, or
/// an iSCSI name.
pub fn parse_transport_id(s: &str) -> Result<Vec<u8>, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(addr) = lower.strip_prefix("sas,") {
        return Ok(pr::sas_transport_id(parse_hex_u64(addr)?));
    }
    if let Some(name) = lower.strip_prefix("fcp,") {
        return Ok(pr::fc_transport_id(parse_hex_u64(name)?));
    }
    if let Some(hex) = lower.strip_prefix("hex,") {
        let hex: String = hex
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        if hex.len() % 2 != 0 {
            return Err(format!("'{s}': odd number of hex digits"));
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("'{s}': bad hex")))
            .collect();
    }
    if ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return Ok(pr::iscsi_transport_id(s));
    }
    Err(format!(
        "'{s}': expected sas,HEX | fcp,HEX | hex,BYTES | an iSCSI name"
    ))
}

impl PersistArgs {
    /// The CDB and parameter list this invocation sends.
    pub fn request(&self) -> ([u8; CDB_SIZE], Vec<u8>) {
        let pr_in = [
            (self.read_keys, sa_in::READ_KEYS),
            (self.read_reservation, sa_in::READ_RESERVATION),
            (self.report_capabilities, sa_in::REPORT_CAPABILITIES),
            (self.read_full_status, sa_in::READ_FULL_STATUS),
        ];
        if let Some((_, sa)) = pr_in.iter().find(|(on, _)| *on) {
            return (pr::pr_in_cdb(*sa, self.alloc_length), Vec::new());
        }
        let sa = [
            (self.register, sa_out::REGISTER),
            (self.register_ignore, sa_out::REGISTER_AND_IGNORE),
            (self.reserve, sa_out::RESERVE),
            (self.release, sa_out::RELEASE),
            (self.clear, sa_out::CLEAR),
            (self.preempt, sa_out::PREEMPT),
            (self.preempt_abort, sa_out::PREEMPT_AND_ABORT),
            (self.register_move, sa_out::REGISTER_AND_MOVE),
        ]
        .iter()
        .find(|(on, _)| *on)
        .map_or(sa_out::REGISTER, |(_, sa)| *sa);
        let params = if sa == sa_out::REGISTER_AND_MOVE {
            pr::MoveParamList {
                key: self.key,
                sa_key: self.sa_key,
                unreg: self.unreg,
                aptpl: self.aptpl,
                relative_target_port: self.relative_target_port,
                transport_id: self.transport_ids.first().cloned().unwrap_or_default(),
            }
            .encode()
        } else {
            let mut f = 0;
            if self.aptpl {
                f |= flags::APTPL;
            }
            if self.all_tg_pt {
                f |= flags::ALL_TG_PT;
            }
            if self.spec_i_pt {
                f |= flags::SPEC_I_PT;
            }
            pr::ParamList {
                key: self.key,
                sa_key: self.sa_key,
                flags: f,
                transport_ids: self.transport_ids.clone(),
            }
            .encode()
        };
        (
            pr::pr_out_cdb(sa, self.scope, self.pr_type, params.len() as u32),
            params,
        )
    }
}

/// Exit codes, following sg3_utils (`sg_persist`) where it has one.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Bad arguments, or no helper / device to talk to.
    pub const USAGE_OR_IO: u8 = 1;
    /// NOT READY.
    pub const NOT_READY: u8 = 2;
    /// MEDIUM / HARDWARE ERROR.
    pub const MEDIUM_HARD: u8 = 3;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 6;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 11;
    /// Any other failure.
    pub const OTHER: u8 = 15;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 24;
}

/// Exit code for a SCSI status and sense.
pub fn exit_code(status_byte: u32, sense: &[u8; SENSE_SIZE]) -> u8 {
    match status_byte as u8 {
        status::GOOD => exit::OK,
        status::RESERVATION_CONFLICT => exit::RESERVATION_CONFLICT,
        status::CHECK_CONDITION => match SenseCode::parse(sense).map(|s| s.key) {
            Some(2) => exit::NOT_READY,
            Some(3) | Some(4) => exit::MEDIUM_HARD,
            Some(5) => exit::ILLEGAL_REQUEST,
            Some(6) => exit::UNIT_ATTENTION,
            Some(0x0b) => exit::ABORTED_COMMAND,
            _ => exit::OTHER,
        },
        _ => exit::OTHER,
    }
}

/// Bytes as lower-case hex digits, no separators.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Describes a reply's status (and sense) in words.
pub fn describe_status(status_byte: u32, sense: &[u8; SENSE_SIZE]) -> String {
    let mut s = scsi::status::name(status_byte as u8).to_string();
    if status_byte as u8 == status::CHECK_CONDITION {
        if let Some(code) = SenseCode::parse(sense) {
            let _ = write!(s, ", sense {code} ({})", sense_text(code));
        }
    }
    s
}

fn sense_text(code: SenseCode) -> &'static str {
    match (code.key, code.asc, code.ascq) {
        (0x06, 0x2a, 0x03) => "reservations preempted",
        (0x06, 0x2a, 0x04) => "reservations released",
        (0x06, 0x2a, 0x05) => "registrations preempted",
        (0x06, 0x29, _) => "power on, reset or bus device reset",
        (0x05, 0x20, 0x00) => "invalid command operation code",
        (0x05, 0x24, 0x00) => "invalid field in CDB",
        (0x05, 0x26, 0x00) => "invalid field in parameter list",
        (0x05, 0x26, 0x04) => "invalid release of persistent reservation",
        (0x05, 0x1a, 0x00) => "parameter list length error",
        (0x04, 0x44, 0x00) => "internal target failure",
        (0x0b, 0x00, 0x06) => "I/O process terminated",
        (0x0b, 0x08, 0x00) => "logical unit communication failure",
        (0x02, 0x04, _) => "logical unit not ready",
        _ => match code.key {
            0x02 => "not ready",
            0x03 => "medium error",
            0x04 => "hardware error",
            0x05 => "illegal request",
            0x06 => "unit attention",
            0x0b => "aborted command",
            _ => "sense",
        },
    }
}

/// Decodes PR IN data for the service action in `cdb` into text lines.
pub fn describe_data(cdb: &[u8; CDB_SIZE], data: &[u8]) -> String {
    let mut out = String::new();
    match cdb[1] & 0x1f {
        sa_in::READ_KEYS => match decode::keys(data) {
            Ok(k) if k.keys.is_empty() && k.additional_length == 0 => {
                let _ = writeln!(
                    out,
                    "  PR generation=0x{:x}, there are NO registered reservation keys",
                    k.generation
                );
            }
            Ok(k) => {
                let _ = writeln!(
                    out,
                    "  PR generation=0x{:x}, {} registered reservation key{} follow{}:",
                    k.generation,
                    k.additional_length / 8,
                    if k.additional_length == 8 { "" } else { "s" },
                    if k.additional_length == 8 { "s" } else { "" }
                );
                for key in &k.keys {
                    let _ = writeln!(out, "    0x{key:x}");
                }
            }
            Err(e) => out.push_str(&format!("  {e}\n")),
        },
        sa_in::READ_RESERVATION => match decode::reservation(data) {
            Ok(r) => match r.holder {
                None => {
                    let _ = writeln!(
                        out,
                        "  PR generation=0x{:x}, there is NO reservation held",
                        r.generation
                    );
                }
                Some((key, scope, t)) => {
                    let _ = writeln!(
                        out,
                        "  PR generation=0x{:x}, Reservation follows:",
                        r.generation
                    );
                    let _ = writeln!(out, "    Key=0x{key:x}");
                    let _ = writeln!(
                        out,
                        "    scope: {},  type: {}",
                        scope_name(scope),
                        pr::pr_type::name(t)
                    );
                }
            },
            Err(e) => out.push_str(&format!("  {e}\n")),
        },
        sa_in::REPORT_CAPABILITIES => match decode::capabilities(data) {
            Ok(c) => {
                let _ = writeln!(out, "Report capabilities response:");
                let bit = u8::from;
                let _ = writeln!(
                    out,
                    "  Compatible Reservation Handling(CRH): {}",
                    bit(c.crh())
                );
                let _ = writeln!(
                    out,
                    "  Specify Initiator Ports Capable(SIP_C): {}",
                    bit(c.sip_c())
                );
                let _ = writeln!(out, "  All Target Ports Capable(ATP_C): {}", bit(c.atp_c()));
                let _ = writeln!(
                    out,
                    "  Persist Through Power Loss Capable(PTPL_C): {}",
                    bit(c.ptpl_c())
                );
                let _ = writeln!(out, "  Type Mask Valid(TMV): {}", bit(c.type_mask_valid()));
                let _ = writeln!(
                    out,
                    "  Persist Through Power Loss Active(PTPL_A): {}",
                    bit(c.ptpl_a())
                );
                if c.type_mask_valid() {
                    let _ = writeln!(out, "    Support indicated in Type mask:");
                    for t in c.types() {
                        let _ = writeln!(out, "      {}: 1", pr::pr_type::name(t));
                    }
                }
            }
            Err(e) => out.push_str(&format!("  {e}\n")),
        },
        sa_in::READ_FULL_STATUS => match decode::full_status(data) {
            Ok(f) => {
                let _ = writeln!(out, "  PR generation=0x{:x}", f.generation);
                for r in &f.registrations {
                    let _ = writeln!(out, "    Key=0x{:x}", r.key);
                    let all = if r.all_tg_pt { "set" } else { "clear" };
                    let _ = writeln!(out, "      All target ports bit {all}");
                    let _ = writeln!(
                        out,
                        "      Relative port address: 0x{:x}",
                        r.relative_target_port
                    );
                    if r.holder {
                        let _ = writeln!(out, "      << Reservation holder >>");
                        let _ = writeln!(
                            out,
                            "      scope: {},  type: {}",
                            scope_name(r.scope),
                            pr::pr_type::name(r.pr_type)
                        );
                    } else {
                        let _ = writeln!(out, "      not reservation holder");
                    }
                    let _ = writeln!(out, "      Transport Id: {}", hex(&r.transport_id));
                }
            }
            Err(e) => out.push_str(&format!("  {e}\n")),
        },
        _ => {}
    }
    out
}

fn scope_name(scope: u8) -> &'static str {
    if scope == 0 {
        "LU_SCOPE"
    } else {
        "obsolete or reserved scope"
    }
}

/// The reply as JSON (one line, fields in this order; the details of a
/// decoded PR IN reply follow `data`).
pub fn reply_json(cdb: &[u8; CDB_SIZE], reply: &Reply) -> String {
    use serde::Serialize;

    #[derive(Serialize)]
    struct Json {
        status: u32,
        status_name: &'static str,
        sense: Option<Sense>,
        data: String,
        #[serde(flatten)]
        details: Option<Details>,
    }
    #[derive(Serialize)]
    struct Sense {
        key: u8,
        asc: u8,
        ascq: u8,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Details {
        Keys {
            generation: u32,
            keys: Vec<String>,
        },
        Reservation {
            generation: u32,
            reservation: Option<Holder>,
        },
        Capabilities {
            type_mask_valid: bool,
            types: Vec<u8>,
            sip_c: bool,
            atp_c: bool,
            ptpl_c: bool,
        },
        FullStatus {
            generation: u32,
            registrations: Vec<Registration>,
        },
    }
    #[derive(Serialize)]
    struct Holder {
        key: String,
        scope: u8,
        #[serde(rename = "type")]
        pr_type: u8,
    }
    #[derive(Serialize)]
    struct Registration {
        key: String,
        holder: bool,
        all_tg_pt: bool,
        scope: u8,
        #[serde(rename = "type")]
        pr_type: u8,
        relative_target_port: u16,
        transport_id: String,
    }

    let sense = (reply.header.status as u8 == status::CHECK_CONDITION)
        .then(|| SenseCode::parse(&reply.header.sense))
        .flatten();
    let details = if cdb[0] == crate::protocol::PERSISTENT_RESERVE_IN && reply.header.status == 0 {
        match cdb[1] & 0x1f {
            sa_in::READ_KEYS => decode::keys(&reply.data).ok().map(|k| Details::Keys {
                generation: k.generation,
                keys: k.keys.iter().map(|k| format!("0x{k:x}")).collect(),
            }),
            sa_in::READ_RESERVATION => {
                decode::reservation(&reply.data)
                    .ok()
                    .map(|r| Details::Reservation {
                        generation: r.generation,
                        reservation: r.holder.map(|(key, scope, pr_type)| Holder {
                            key: format!("0x{key:x}"),
                            scope,
                            pr_type,
                        }),
                    })
            }
            sa_in::REPORT_CAPABILITIES => {
                decode::capabilities(&reply.data)
                    .ok()
                    .map(|c| Details::Capabilities {
                        type_mask_valid: c.type_mask_valid(),
                        types: c.types(),
                        sip_c: c.sip_c(),
                        atp_c: c.atp_c(),
                        ptpl_c: c.ptpl_c(),
                    })
            }
            sa_in::READ_FULL_STATUS => {
                decode::full_status(&reply.data)
                    .ok()
                    .map(|f| Details::FullStatus {
                        generation: f.generation,
                        registrations: f
                            .registrations
                            .iter()
                            .map(|r| Registration {
                                key: format!("0x{:x}", r.key),
                                holder: r.holder,
                                all_tg_pt: r.all_tg_pt,
                                scope: r.scope,
                                pr_type: r.pr_type,
                                relative_target_port: r.relative_target_port,
                                transport_id: hex(&r.transport_id),
                            })
                            .collect(),
                    })
            }
            _ => None,
        }
    } else {
        None
    };
    let json = Json {
        status: reply.header.status,
        status_name: scsi::status::name(reply.header.status as u8),
        sense: sense.map(|s| Sense {
            key: s.key,
            asc: s.asc,
            ascq: s.ascq,
        }),
        data: hex(&reply.data),
        details,
    };
    // Plain structs with string keys: serialising cannot fail.
    serde_json::to_string(&json).unwrap_or_default()
}

/// Runs `pr-helper persist`.
pub fn persist(args: &PersistArgs) -> ExitCode {
    let device = match OpenOptions::new()
        .read(true)
        .write(!args.read_only)
        .open(&args.device)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pr-helper: cannot open {}: {e}", args.device.display());
            return ExitCode::from(exit::USAGE_OR_IO);
        }
    };
    let (cdb, params) = args.request();
    let reply = Client::connect(&args.socket).and_then(|mut c| {
        c.set_timeout(Some(Duration::from_secs(120)))?;
        c.execute(&cdb, device.as_fd(), &params)
    });
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "pr-helper: no answer from the helper at {}: {e}",
                args.socket.display()
            );
            return ExitCode::from(exit::USAGE_OR_IO);
        }
    };
    if args.raw {
        println!("{}", hex(&reply.to_bytes()));
    } else if args.json {
        println!("{}", reply_json(&cdb, &reply));
    } else if reply.header.status == 0 {
        if cdb[0] == crate::protocol::PERSISTENT_RESERVE_IN {
            print!("{}", describe_data(&cdb, &reply.data));
        } else {
            println!("PR out: command successful");
        }
    } else {
        eprintln!(
            "persistent reserve {}: {}",
            if cdb[0] == crate::protocol::PERSISTENT_RESERVE_IN {
                "in"
            } else {
                "out"
            },
            describe_status(reply.header.status, &reply.header.sense)
        );
    }
    ExitCode::from(exit_code(reply.header.status, &reply.header.sense))
}

/// `pr-helper probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The device (e.g. /dev/sdb); needs CAP_SYS_RAWIO (root).
    pub device: PathBuf,
    /// SG_IO timeout in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

/// Sends REPORT CAPABILITIES and READ KEYS directly (SG_IO) and says whether
/// the device supports persistent reservations, and which types.
pub fn probe(args: &ProbeArgs) -> ExitCode {
    let device = match OpenOptions::new().read(true).open(&args.device) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pr-helper: cannot open {}: {e}", args.device.display());
            return ExitCode::from(exit::USAGE_OR_IO);
        }
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let run = |sa: u8| {
        let cdb = pr::pr_in_cdb(sa, 8192);
        let mut buf = vec![0u8; 8192];
        let outcome = scsi::sgio::execute(
            device.as_fd(),
            &cdb,
            scsi::sgio::DataPhase::FromDevice(&mut buf),
            timeout,
        );
        let c = scsi::complete(outcome, buf.len());
        buf.truncate(c.transferred);
        (c, buf)
    };
    let (caps, data) = run(sa_in::REPORT_CAPABILITIES);
    if caps.status != status::GOOD {
        let why = describe_status(u32::from(caps.status), &caps.sense);
        println!(
            "{}: persistent reservations NOT supported (REPORT CAPABILITIES: {why})",
            args.device.display()
        );
        return ExitCode::from(exit::USAGE_OR_IO);
    }
    println!(
        "{}: persistent reservations supported",
        args.device.display()
    );
    if let Ok(c) = decode::capabilities(&data) {
        if c.type_mask_valid() {
            let names: Vec<String> = c
                .types()
                .iter()
                .map(|t| format!("{t} ({})", pr::pr_type::name(*t)))
                .collect();
            println!("  reservation types: {}", names.join(", "));
        } else {
            println!("  reservation types: not reported (TMV clear)");
        }
        println!(
            "  SIP_C={} ATP_C={} PTPL_C={} PTPL_A={}",
            u8::from(c.sip_c()),
            u8::from(c.atp_c()),
            u8::from(c.ptpl_c()),
            u8::from(c.ptpl_a())
        );
    }
    let (keys, data) = run(sa_in::READ_KEYS);
    if keys.status == status::GOOD {
        print!(
            "{}",
            describe_data(&pr::pr_in_cdb(sa_in::READ_KEYS, 8192), &data)
        );
    } else {
        println!(
            "  READ KEYS: {}",
            describe_status(u32::from(keys.status), &keys.sense)
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::{Command, FromArgMatches};

    use super::*;

    /// `pr-helper persist ARGS` as clap parses it (with a device and the
    /// default socket).
    fn persist_args(argv: &[&str]) -> PersistArgs {
        let mut full = vec!["persist", "-d", "/dev/null"];
        full.extend_from_slice(argv);
        let m = PersistArgs::augment_args(Command::new("persist"))
            .try_get_matches_from(full)
            .expect("valid arguments");
        PersistArgs::from_arg_matches(&m).expect("valid arguments")
    }

    /// The CDBs and parameter lists `persist` sends, byte by byte (SPC-4
    /// §6.15, §6.16; QEMU zero-pads the CDB to 16 bytes).
    #[test]
    fn persist_sends_the_cdb_and_parameter_list_of_its_action() {
        let (cdb, params) = persist_args(&["--read-keys", "--alloc-length", "100"]).request();
        assert_eq!(cdb[..10], [0x5e, 0x00, 0, 0, 0, 0, 0, 0, 100, 0]);
        assert!(cdb[10..].iter().all(|b| *b == 0) && params.is_empty());

        let (cdb, params) = persist_args(&["--register", "--sa-key", "0xabc"]).request();
        assert_eq!(cdb[..10], [0x5f, 0x00, 0x00, 0, 0, 0, 0, 0, 24, 0]);
        let mut want = vec![0u8; 24];
        want[8..16].copy_from_slice(&0xabcu64.to_be_bytes());
        assert_eq!(params, want);

        let (cdb, params) = persist_args(&["--reserve", "--key", "5", "--type", "5"]).request();
        assert_eq!(cdb[..3], [0x5f, 0x01, 0x05]);
        assert_eq!(params[..8], 5u64.to_be_bytes());

        // SPEC_I_PT with a TransportID: the flag, then the list's length and
        // the TransportID after the 24 bytes.
        let (cdb, params) = persist_args(&[
            "--register",
            "--sa-key",
            "1",
            "--spec-i-pt",
            "--all-tg-pt",
            "--aptpl",
            "--transport-id",
            "sas,5001405bbbbbbbb2",
        ])
        .request();
        assert_eq!(params.len(), 24 + 4 + 24);
        assert_eq!(cdb[5..9], (params.len() as u32).to_be_bytes());
        assert_eq!(
            params[20],
            flags::SPEC_I_PT | flags::ALL_TG_PT | flags::APTPL
        );
        assert_eq!(params[24..28], 24u32.to_be_bytes());
        assert_eq!(params[28..], pr::sas_transport_id(0x5001405bbbbbbbb2)[..]);

        // REGISTER AND MOVE: its own list (relative target port, the
        // TransportID's length at 20).
        let (cdb, params) = persist_args(&[
            "--register-move",
            "--key",
            "1",
            "--sa-key",
            "2",
            "--type",
            "5",
            "--relative-target-port",
            "2",
            "--unreg",
            "--transport-id",
            "iqn.2026-12.example:h",
        ])
        .request();
        assert_eq!(cdb[..3], [0x5f, 0x07, 0x05]);
        assert_eq!(params[17], 0x02, "UNREG");
        assert_eq!(params[18..20], 2u16.to_be_bytes());
        let tid = pr::iscsi_transport_id("iqn.2026-12.example:h");
        assert_eq!(params[20..24], (tid.len() as u32).to_be_bytes());
        assert_eq!(params[24..], tid[..]);
    }

    #[test]
    fn transport_id_forms() {
        assert_eq!(
            parse_transport_id("sas,0x5001405bbbbbbbb2").unwrap(),
            pr::sas_transport_id(0x5001405bbbbbbbb2)
        );
        assert_eq!(
            parse_transport_id("FCP,21000024ff000001").unwrap(),
            pr::fc_transport_id(0x21000024ff000001)
        );
        assert_eq!(
            parse_transport_id("hex,05:00 00:04 41:00:00:00").unwrap(),
            vec![5, 0, 0, 4, 0x41, 0, 0, 0]
        );
        // iSCSI names keep their case.
        assert_eq!(
            parse_transport_id("iqn.2026-12.Example:H").unwrap(),
            pr::iscsi_transport_id("iqn.2026-12.Example:H")
        );
        for bad in ["sas,zz", "hex,abc", "hex,zz", "wwn,1", "", "fcp,"] {
            assert!(parse_transport_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_hex_u64("0XfF"), Ok(255));
        assert!(parse_hex_u64("10000000000000000").is_err(), "65 bits");
    }

    /// sg_persist's exit codes for the statuses and sense keys a helper
    /// answers.
    #[test]
    fn exit_codes_follow_sg_persist() {
        let sense = |key: u8| {
            let mut s = [0u8; SENSE_SIZE];
            s[0] = 0x70;
            s[2] = key;
            s[7] = 10;
            s
        };
        let none = [0u8; SENSE_SIZE];
        assert_eq!(exit_code(0x00, &none), exit::OK);
        assert_eq!(exit_code(0x18, &none), exit::RESERVATION_CONFLICT);
        for (key, code) in [
            (2, exit::NOT_READY),
            (3, exit::MEDIUM_HARD),
            (4, exit::MEDIUM_HARD),
            (5, exit::ILLEGAL_REQUEST),
            (6, exit::UNIT_ATTENTION),
            (0x0b, exit::ABORTED_COMMAND),
            (1, exit::OTHER),
        ] {
            assert_eq!(exit_code(0x02, &sense(key)), code, "sense key {key}");
        }
        // CHECK CONDITION without readable sense, BUSY.
        assert_eq!(exit_code(0x02, &none), exit::OTHER);
        assert_eq!(exit_code(0x08, &none), exit::OTHER);
    }
}
