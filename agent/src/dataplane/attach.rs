//! Attaching and detaching XDP programs through pinned bpf_links.

use super::{OBJECT, PinDir, XDP_COUNT, XDP_FWD6, fwd6::FWD6_MAPS, nat4::NAT4_MAPS};
use crate::iface;
use anyhow::{Context, Result, bail};
use aya::{
    EbpfLoader,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpMode},
    },
};
use exitd_common::{IFACE_COUNTERS_MAP, nat4::CT4_MAP};
use std::{fs, path::PathBuf};

/// XDP attachment mode as an operator chooses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Native (driver) mode where the driver supports it, generic mode otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only; fails on drivers without XDP support.
    Native,
    /// Generic (skb) mode: works on every device, slower.
    Generic,
}

impl From<XdpModeArg> for XdpMode {
    fn from(mode: XdpModeArg) -> XdpMode {
        match mode {
            XdpModeArg::Auto => XdpMode::Default,
            XdpModeArg::Native => XdpMode::Driver,
            XdpModeArg::Generic => XdpMode::Skb,
        }
    }
}

/// What `attach_xdp` did.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    Attached { ifindex: u32 },
    AlreadyAttached { ifindex: u32 },
}

/// The XDP programs an operator can attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpProgram {
    /// Count packets and bytes, pass everything.
    #[default]
    Count,
    /// Forward IPv6 per /64 (the exit node's fast path).
    Fwd6,
}

impl XdpProgram {
    pub fn name(self) -> &'static str {
        match self {
            XdpProgram::Count => XDP_COUNT,
            XdpProgram::Fwd6 => XDP_FWD6,
        }
    }
}

/// A pinned XDP attachment found in the pin directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    /// Name of the attached program.
    pub program: String,
    pub ifname: String,
    pub ifindex: u32,
    /// False when the interface was deleted or recreated since: the link is defunct.
    pub live: bool,
    #[serde(skip)]
    pin: PathBuf,
}

/// Pin file name of an XDP link: program, interface name and index, so a link left behind
/// by an interface that was deleted and recreated (new index) is recognised as stale. The
/// BPF filesystem refuses names containing '.', which interface names may contain (VLANs
/// such as `eth0.100`); ':' never appears in an interface name, so it stands in for the dot.
fn link_file_name(program: &str, ifname: &str, ifindex: u32) -> String {
    format!("{program}@{}@{ifindex}", ifname.replace('.', ":"))
}

fn parse_link_file_name(file: &str) -> Option<(String, String, u32)> {
    let (program, rest) = file.split_once('@')?;
    let (name, index) = rest.rsplit_once('@')?;
    if !program.starts_with("xdp_") {
        return None;
    }
    Some((
        program.to_string(),
        name.replace(':', "."),
        index.parse().ok()?,
    ))
}

/// All XDP attachments pinned in `pins`, sorted by interface name.
pub fn attachments(pins: &PinDir) -> Result<Vec<Attachment>> {
    let dir = pins.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let file = entry.file_name();
        let Some((program, ifname, ifindex)) = file.to_str().and_then(parse_link_file_name) else {
            continue;
        };
        let live = iface::index_of(&ifname).ok() == Some(ifindex);
        found.push(Attachment {
            program,
            ifname,
            ifindex,
            live,
            pin: entry.path(),
        });
    }
    found.sort_by(|a, b| a.ifname.cmp(&b.ifname).then(a.ifindex.cmp(&b.ifindex)));
    Ok(found)
}

/// Attaches `program` to `ifname` (in the calling thread's network namespace) and pins the
/// link, unless that program is attached already. Another exitd program on the interface is
/// replaced; stale pins of a recreated interface of the same name are removed.
pub fn attach_xdp(
    pins: &PinDir,
    ifname: &str,
    program: XdpProgram,
    mode: XdpModeArg,
) -> Result<AttachOutcome> {
    let mut outcomes = attach_xdp_all(pins, &[ifname.to_string()], program, mode)?;
    outcomes.pop().context("one interface gives one outcome")
}

/// `attach_xdp` for several interfaces at once: the program is loaded (and verified) once
/// and only when some interface still needs it, then attached to each.
pub fn attach_xdp_all(
    pins: &PinDir,
    ifnames: &[String],
    program: XdpProgram,
    mode: XdpModeArg,
) -> Result<Vec<AttachOutcome>> {
    attach_xdp_all_sized(pins, ifnames, program, mode, None)
}

/// `attach_xdp_all` that, when it creates the connection-tracking map, gives it
/// `ct_entries` entries (an existing pinned map keeps its size).
pub fn attach_xdp_all_sized(
    pins: &PinDir,
    ifnames: &[String],
    program: XdpProgram,
    mode: XdpModeArg,
    ct_entries: Option<u32>,
) -> Result<Vec<AttachOutcome>> {
    let name = program.name();
    let ifindexes = ifnames
        .iter()
        .map(|n| iface::index_of(n))
        .collect::<Result<Vec<u32>>>()?;
    pins.ensure()?;
    let existing = attachments(pins)?;
    let mut outcomes = Vec::with_capacity(ifnames.len());
    let mut ebpf = None;
    for (ifname, &ifindex) in ifnames.iter().zip(&ifindexes) {
        if existing
            .iter()
            .any(|a| &a.ifname == ifname && a.live && a.program == name)
        {
            outcomes.push(AttachOutcome::AlreadyAttached { ifindex });
            continue;
        }
        for old in existing.iter().filter(|a| &a.ifname == ifname) {
            tracing::info!(
                ifname,
                old_ifindex = old.ifindex,
                old.program,
                "removing old XDP link"
            );
            unpin(old)?;
        }
        if ebpf.is_none() {
            ebpf = Some(load_program(pins, name, ct_entries)?);
        }
        let xdp: &mut Xdp = ebpf
            .as_mut()
            .and_then(|e| e.program_mut(name))
            .with_context(|| format!("the eBPF object has no program {name}"))?
            .try_into()?;
        let link_id = xdp
            .attach_to_if_index(ifindex, mode.into())
            .with_context(|| format!("cannot attach {name} to {ifname} in {mode:?} mode"))?;
        let link = xdp.take_link(link_id)?;
        pin_link(link, pins, name, ifname, ifindex)?;
        tracing::info!(ifname, ifindex, ?mode, "attached {name}");
        outcomes.push(AttachOutcome::Attached { ifindex });
    }
    Ok(outcomes)
}

/// Loads the object with every map pinned in `pins` (all programs and later runs of exitd
/// share the same state) and loads `name` into the kernel.
fn load_program(pins: &PinDir, name: &str, ct_entries: Option<u32>) -> Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    for map in pinned_maps() {
        loader.map_pin_path(map, pins.map(map));
    }
    if let Some(entries) = ct_entries {
        loader.map_max_entries(CT4_MAP, entries);
    }
    let mut ebpf = loader.load(OBJECT).context(
        "cannot load the eBPF object (are you root, or do you have CAP_BPF and CAP_NET_ADMIN?)",
    )?;
    let xdp: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()?;
    xdp.load()
        .with_context(|| format!("the kernel refused to load {name}"))?;
    super::tails::fill(&mut ebpf)?;
    Ok(ebpf)
}

fn pin_link(link: XdpLink, pins: &PinDir, program: &str, ifname: &str, ifindex: u32) -> Result<()> {
    let fd_link = FdLink::try_from(link).context(
        "the kernel attached XDP without a bpf_link (kernel older than 5.9?): \
         the attachment cannot be pinned",
    )?;
    let path = pins
        .links_dir()
        .join(link_file_name(program, ifname, ifindex));
    fd_link
        .pin(&path)
        .with_context(|| format!("cannot pin the XDP link at {}", path.display()))?;
    Ok(())
}

fn unpin(attachment: &Attachment) -> Result<()> {
    let link = PinnedLink::from_pin(&attachment.pin)
        .with_context(|| format!("cannot open pinned link {}", attachment.pin.display()))?;
    // Dropping the last reference to the link detaches the program.
    drop(
        link.unpin()
            .with_context(|| format!("cannot remove {}", attachment.pin.display()))?,
    );
    Ok(())
}

/// Detaches exitd's XDP program from `ifname`.
pub fn detach_xdp(pins: &PinDir, ifname: &str) -> Result<()> {
    iface::validate_name(ifname)?;
    let matching: Vec<_> = attachments(pins)?
        .into_iter()
        .filter(|a| a.ifname == ifname)
        .collect();
    if matching.is_empty() {
        bail!(
            "no exitd XDP program is attached to {ifname:?} (nothing pinned in {})",
            pins.links_dir().display()
        );
    }
    for attachment in &matching {
        unpin(attachment)?;
        tracing::info!(ifname, ifindex = attachment.ifindex, "detached");
    }
    Ok(())
}

/// Detaches every pinned XDP program and removes the pinned maps; returns the interfaces.
pub fn detach_all(pins: &PinDir) -> Result<Vec<String>> {
    let mut detached = Vec::new();
    for attachment in attachments(pins)? {
        unpin(&attachment)?;
        detached.push(attachment.ifname);
    }
    for map in pinned_maps() {
        let path = pins.map(map);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    Ok(detached)
}

/// Every map exitd pins: all programs and later runs share them.
fn pinned_maps() -> impl Iterator<Item = &'static str> {
    std::iter::once(IFACE_COUNTERS_MAP)
        .chain(FWD6_MAPS)
        .chain(NAT4_MAPS)
        .chain(super::tails::TAIL_MAPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_file_names_round_trip() {
        let file = link_file_name("xdp_fwd6", "veth-1abc-1", 42);
        assert_eq!(file, "xdp_fwd6@veth-1abc-1@42");
        let parsed = parse_link_file_name(&file);
        assert_eq!(parsed, Some(("xdp_fwd6".into(), "veth-1abc-1".into(), 42)));
    }

    #[test]
    fn dotted_interface_names_get_no_dot_in_the_pin() {
        let file = link_file_name("xdp_count", "eth0.100", 7);
        assert!(!file.contains('.'), "bpffs refuses dots: {file}");
        let parsed = parse_link_file_name(&file);
        assert_eq!(parsed, Some(("xdp_count".into(), "eth0.100".into(), 7)));
    }

    #[test]
    fn foreign_files_are_not_links() {
        assert_eq!(parse_link_file_name("IFACE_COUNTERS"), None);
        assert_eq!(parse_link_file_name("xdp_count@eth0@x"), None);
        assert_eq!(parse_link_file_name("eth0@3"), None);
        assert_eq!(parse_link_file_name("other@eth0@3"), None);
    }
}
