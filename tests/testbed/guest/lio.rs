//! LIO (the kernel's SCSI target) through configfs: fresh file-backed LUNs,
//! each exported through two tcm_loop targets, i.e. two initiators (I_T
//! nexuses) on one logical unit: `/dev/sdX` + `/dev/sgN` per initiator.
//!
//! Every scenario gets a fresh backstore and fresh targets (Debian 6.1 LIO
//! leaks a LUN reference after some PR sequences, so nothing is torn
//! down); the initiator names stay the same, so PR data (transport IDs,
//! relative port numbers, generation) is comparable byte for byte between
//! runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TARGET: &str = "/sys/kernel/config/target";

/// Initiator port names of the two nexuses (SAS addresses, naa. form).
pub const INITIATORS: [&str; 2] = ["naa.5001405bbbbbbbb1", "naa.5001405bbbbbbbb2"];

/// The SAS addresses of [`INITIATORS`] (for TransportIDs).
pub const INITIATOR_SAS: [u64; 2] = [0x5001405bbbbbbbb1, 0x5001405bbbbbbbb2];

/// One initiator's view of the shared LUN.
#[derive(Debug, Clone)]
pub struct Path2 {
    /// Block device, e.g. /dev/sdc.
    pub block: PathBuf,
    /// SCSI generic device, e.g. /dev/sg2.
    pub sg: PathBuf,
}

/// A LUN seen through two initiators.
#[derive(Debug, Clone)]
pub struct Lun {
    /// The two initiators' devices.
    pub paths: [Path2; 2],
}

fn write(path: impl AsRef<Path>, value: &str) -> Result<(), String> {
    fs::write(path.as_ref(), value)
        .map_err(|e| format!("write {value:?} to {}: {e}", path.as_ref().display()))
}

fn mkdir(path: impl AsRef<Path>) -> Result<(), String> {
    fs::create_dir_all(path.as_ref()).map_err(|e| format!("mkdir {}: {e}", path.as_ref().display()))
}

/// The configfs directory of the tcm_loop target portal group through which
/// initiator `initiator` sees LUN `index` (target names are unique per LUN
/// and nexus).
fn tpg(index: usize, initiator: usize) -> String {
    let wwn = format!("naa.50014050{:06x}{:02x}", index, initiator + 1);
    format!("{TARGET}/loopback/{wwn}/tpgt_1")
}

/// Takes the target port through which initiator `initiator` sees LUN
/// `index` offline or back online (tcm_loop's `transport_status`): while
/// offline, every command through that nexus ends at once with
/// DID_TRANSPORT_DISRUPTED, as when a SAN link drops, while the device
/// itself stays `running` and multipathd learns of it only at its next
/// path check.
pub fn set_transport(index: usize, initiator: usize, online: bool) -> Result<(), String> {
    write(
        format!("{}/transport_status", tpg(index, initiator)),
        if online { "online" } else { "offline" },
    )
}

/// Creates LUN number `index` (16 MiB file in tmpfs) with two initiators.
pub fn create(index: usize) -> Result<Lun, String> {
    let file = PathBuf::from(format!("/tmp/lun{index}.img"));
    let f = fs::File::create(&file).map_err(|e| format!("create {}: {e}", file.display()))?;
    f.set_len(16 << 20).map_err(|e| e.to_string())?;
    let backstore = format!("{TARGET}/core/fileio_{index}/disk{index}");
    mkdir(&backstore)?;
    write(
        format!("{backstore}/control"),
        &format!("fd_dev_name={},fd_dev_size={}", file.display(), 16 << 20),
    )?;
    // The serial must be set before any LUN links to the backstore.
    write(
        format!("{backstore}/wwn/vpd_unit_serial"),
        &format!("prhtestbed{index:04}"),
    )?;
    write(format!("{backstore}/enable"), "1")?;
    let mut paths = Vec::new();
    for (i, initiator) in INITIATORS.iter().enumerate() {
        let tpg = tpg(index, i);
        mkdir(format!("{tpg}/lun/lun_0"))?;
        number_port(&tpg, i)?;
        write(format!("{tpg}/nexus"), initiator)?;
        std::os::unix::fs::symlink(&backstore, format!("{tpg}/lun/lun_0/port0"))
            .map_err(|e| format!("link LUN {index} in {tpg}: {e}"))?;
        let address = fs::read_to_string(format!("{tpg}/address"))
            .map_err(|e| format!("{tpg}/address: {e}"))?;
        paths.push(wait_for_devices(address.trim())?);
    }
    let [a, b]: [Path2; 2] = paths.try_into().map_err(|_| "two paths".to_string())?;
    Ok(Lun { paths: [a, b] })
}

/// Gives the target port of `tpg` the relative target port identifier
/// `slot` + 1. Linux 6.1 numbers a LUN's ports 1, 2, ... itself; later
/// kernels number target portal groups instead and leave tcm_loop's at 0
/// (every port 0: REGISTER AND MOVE cannot name one, and READ FULL STATUS
/// cannot tell them apart) unless set through the TPG's `rtpi` attribute,
/// which they have and 6.1 does not.
fn number_port(tpg: &str, slot: usize) -> Result<(), String> {
    let rtpi = format!("{tpg}/rtpi");
    if Path::new(&rtpi).exists() {
        write(&rtpi, &format!("{}", slot + 1))?;
    }
    Ok(())
}

/// Finds the sd and sg nodes of the SCSI device at `address` ("H:C:T",
/// LUN 0), waiting for the kernel to create them.
fn wait_for_devices(address: &str) -> Result<Path2, String> {
    let hctl = format!("{address}:0");
    let dir = PathBuf::from(format!("/sys/class/scsi_device/{hctl}/device"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let block = first_entry(&dir.join("block"));
        let sg = first_entry(&dir.join("scsi_generic"));
        if let (Some(block), Some(sg)) = (block, sg) {
            let block = PathBuf::from(format!("/dev/{block}"));
            let sg = PathBuf::from(format!("/dev/{sg}"));
            // The node exists before sd has finished probing the disk, and
            // opening it fails with ENXIO until then: wait for an open.
            if sg.exists() && fs::File::open(&block).is_ok() {
                return Ok(Path2 { block, sg });
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no sd/sg device appeared for {hctl}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn first_entry(dir: &Path) -> Option<String> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
}

/// Deletes LUN number `index` from both of its tcm_loop targets, as an
/// administrator removing an exported disk would: the initiators' SCSI
/// devices go away (fds still open on them stay valid but lead nowhere).
/// Waits until the kernel has removed both devices.
pub fn remove(index: usize) -> Result<(), String> {
    let mut gone = Vec::new();
    for i in 0..INITIATORS.len() {
        let tpg = tpg(index, i);
        let address = fs::read_to_string(format!("{tpg}/address"))
            .map_err(|e| format!("{tpg}/address: {e}"))?;
        gone.push(PathBuf::from(format!(
            "/sys/class/scsi_device/{}:0",
            address.trim()
        )));
        let port = format!("{tpg}/lun/lun_0/port0");
        fs::remove_file(&port).map_err(|e| format!("unlink {port}: {e}"))?;
        let lun = format!("{tpg}/lun/lun_0");
        fs::remove_dir(&lun).map_err(|e| format!("rmdir {lun}: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while gone.iter().any(|p| p.exists()) {
        if Instant::now() > deadline {
            return Err(format!("SCSI devices still present: {gone:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Exports LUN number `index` (made by [`create`]) through one more
/// tcm_loop target whose initiator is `initiator` (an naa. name), i.e. one
/// more I_T nexus on the same logical unit; `slot` (2 and up, 0 and 1 are
/// [`create`]'s) makes the target's name unique. Returns the new devices.
pub fn add_initiator(index: usize, slot: usize, initiator: &str) -> Result<Path2, String> {
    let backstore = format!("{TARGET}/core/fileio_{index}/disk{index}");
    let tpg = tpg(index, slot);
    mkdir(format!("{tpg}/lun/lun_0"))?;
    number_port(&tpg, slot)?;
    write(format!("{tpg}/nexus"), initiator)?;
    std::os::unix::fs::symlink(&backstore, format!("{tpg}/lun/lun_0/port0"))
        .map_err(|e| format!("link LUN {index} in {tpg}: {e}"))?;
    let address =
        fs::read_to_string(format!("{tpg}/address")).map_err(|e| format!("{tpg}/address: {e}"))?;
    wait_for_devices(address.trim())
}
