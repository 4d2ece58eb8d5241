//! Attaching and detaching XDP programs through pinned bpf_links.

use super::{OBJECT, PinDir, XDP_COUNT, XDP_FWD6, fwd6::FWD6_MAPS, nat4::NAT4_MAPS};
use crate::iface;
use anyhow::{Context, Result, bail};
use aya::{
    EbpfLoader,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpMode,
    },
};
use exitd_common::{IFACE_COUNTERS_MAP, nat4::CT4_MAP, nat64::CT6_MAP};
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
    pub(super) pin: PathBuf,
}

/// Pin file name of an XDP link: program, interface name and index, so a link left behind
/// by an interface that was deleted and recreated (new index) is recognised as stale. The
/// BPF filesystem refuses names containing '.', which interface names may contain (VLANs
/// such as `eth0.100`); ':' never appears in an interface name, so it stands in for the dot.
fn link_file_name(program: &str, ifname: &str, ifindex: u32) -> String {
    format!("{program}@{}@{ifindex}", ifname.replace('.', ":"))
}

/// Program, interface name and index of a link pin whose program name starts with `kind`
/// (`xdp_` or `tc_`: XDP and TC links share the directory but are attached differently).
fn parse_link_file_name(file: &str, kind: &str) -> Option<(String, String, u32)> {
    let (program, rest) = file.split_once('@')?;
    let (name, index) = rest.rsplit_once('@')?;
    if !program.starts_with(kind) {
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
    pinned_links(pins, "xdp_")
}

/// The link pins in `pins` of programs whose name starts with `kind`, sorted by interface.
pub(super) fn pinned_links(pins: &PinDir, kind: &str) -> Result<Vec<Attachment>> {
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
        let Some((program, ifname, ifindex)) =
            file.to_str().and_then(|f| parse_link_file_name(f, kind))
        else {
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

/// `attach_xdp_all` that, when it creates the connection-tracking maps, sizes them for
/// `max_connections` (an existing pinned map keeps its size).
pub fn attach_xdp_all_sized(
    pins: &PinDir,
    ifnames: &[String],
    program: XdpProgram,
    mode: XdpModeArg,
    max_connections: Option<u32>,
) -> Result<Vec<AttachOutcome>> {
    let name = program.name();
    let mut ebpf = None;
    attach_pinned(pins, ifnames, "xdp_", name, |ifname, ifindex| {
        if ebpf.is_none() {
            ebpf = Some(load_program(pins, name, max_connections)?);
        }
        let xdp: &mut Xdp = ebpf
            .as_mut()
            .and_then(|e| e.program_mut(name))
            .with_context(|| format!("the eBPF object has no program {name}"))?
            .try_into()?;
        let link_id = xdp
            .attach_to_if_index(ifindex, mode.into())
            .with_context(|| format!("cannot attach {name} to {ifname} in {mode:?} mode"))?;
        tracing::info!(ifname, ifindex, ?mode, "attached {name}");
        FdLink::try_from(xdp.take_link(link_id)?).context(
            "the kernel attached XDP without a bpf_link (kernel older than 5.9?): \
             the attachment cannot be pinned",
        )
    })
}

/// Attaches `program` to each of `ifnames` with `attach` (which loads the program the first
/// time it is called, so nothing is loaded when every link is in place) and pins the links.
/// A live pinned link of the same program is kept; other links of this `kind` (`xdp_`,
/// `tc_`) on the interface, and stale ones of a recreated interface, are removed first.
pub(super) fn attach_pinned(
    pins: &PinDir,
    ifnames: &[String],
    kind: &str,
    program: &str,
    mut attach: impl FnMut(&str, u32) -> Result<FdLink>,
) -> Result<Vec<AttachOutcome>> {
    let ifindexes = ifnames
        .iter()
        .map(|n| iface::index_of(n))
        .collect::<Result<Vec<u32>>>()?;
    pins.ensure()?;
    let existing = pinned_links(pins, kind)?;
    let mut outcomes = Vec::with_capacity(ifnames.len());
    for (ifname, &ifindex) in ifnames.iter().zip(&ifindexes) {
        if existing
            .iter()
            .any(|a| &a.ifname == ifname && a.live && a.program == program)
        {
            outcomes.push(AttachOutcome::AlreadyAttached { ifindex });
            continue;
        }
        for old in existing.iter().filter(|a| &a.ifname == ifname) {
            tracing::info!(
                ifname,
                old_ifindex = old.ifindex,
                old.program,
                "removing an old link"
            );
            unpin(old)?;
        }
        let link = attach(ifname, ifindex)?;
        let path = pins
            .links_dir()
            .join(link_file_name(program, ifname, ifindex));
        link.pin(&path)
            .with_context(|| format!("cannot pin the link at {}", path.display()))?;
        outcomes.push(AttachOutcome::Attached { ifindex });
    }
    Ok(outcomes)
}

/// Loads the object with every map pinned in `pins`: all programs (XDP and TC) and later
/// runs of exitd share the same state. Connection tracking is sized for `max_connections`
/// when this creates the maps.
pub(super) fn load_object(pins: &PinDir, max_connections: Option<u32>) -> Result<aya::Ebpf> {
    let mut loader = EbpfLoader::new();
    for map in pinned_maps() {
        loader.map_pin_path(map, pins.map(map));
    }
    if let Some(max) = max_connections {
        let (ct4, ct6) = ct_entries(max);
        loader.map_max_entries(CT4_MAP, ct4);
        loader.map_max_entries(CT6_MAP, ct6);
    }
    loader.load(OBJECT).context(
        "cannot load the eBPF object (are you root, or do you have CAP_BPF and CAP_NET_ADMIN?)",
    )
}

/// CT4 and CT6 entries for `max_connections`: every connection (NAT44 or NAT64) has two
/// CT4 entries (its outgoing one and the reply claiming its public port); a NAT64
/// connection has one CT6 entry besides.
fn ct_entries(max_connections: u32) -> (u32, u32) {
    let max = max_connections.max(1);
    (max.saturating_mul(2), max)
}

/// Loads the object (see `load_object`) and the XDP program `name` into the kernel.
fn load_program(pins: &PinDir, name: &str, max_connections: Option<u32>) -> Result<aya::Ebpf> {
    let mut ebpf = load_object(pins, max_connections)?;
    let xdp: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()?;
    xdp.load()
        .with_context(|| format!("the kernel refused to load {name}"))?;
    super::tails::fill(&mut ebpf)?;
    Ok(ebpf)
}

pub(super) fn unpin(attachment: &Attachment) -> Result<()> {
    let link = PinnedLink::from_pin(&attachment.pin)
        .with_context(|| format!("cannot open pinned link {}", attachment.pin.display()))?;
    // Dropping the last reference to the link detaches the program.
    drop(
        link.unpin()
            .with_context(|| format!("cannot remove {}", attachment.pin.display()))?,
    );
    Ok(())
}

/// Detaches exitd's XDP and TC programs from `ifname`.
pub fn detach_xdp(pins: &PinDir, ifname: &str) -> Result<()> {
    iface::validate_name(ifname)?;
    let matching: Vec<_> = all_links(pins)?
        .into_iter()
        .filter(|a| a.ifname == ifname)
        .collect();
    if matching.is_empty() {
        bail!(
            "no exitd XDP program is attached to {ifname:?}, nor a TC one (nothing pinned in {})",
            pins.links_dir().display()
        );
    }
    for attachment in &matching {
        unpin(attachment)?;
        tracing::info!(ifname, ifindex = attachment.ifindex, "detached");
    }
    Ok(())
}

/// Every pinned XDP and TC link.
fn all_links(pins: &PinDir) -> Result<Vec<Attachment>> {
    let mut links = attachments(pins)?;
    links.extend(super::tc::tc_attachments(pins)?);
    Ok(links)
}

/// Detaches every pinned XDP and TC program and removes the pinned maps; returns the
/// interfaces.
pub fn detach_all(pins: &PinDir) -> Result<Vec<String>> {
    let mut detached = Vec::new();
    for attachment in all_links(pins)? {
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
        .chain(super::nat64::NAT64_MAPS)
        .chain(super::tails::TAIL_MAPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tracking_is_sized_for_both_translators() {
        assert_eq!(ct_entries(1_000_000), (2_000_000, 1_000_000));
        assert_eq!(ct_entries(0), (2, 1), "never an empty map");
    }

    #[test]
    fn link_file_names_round_trip() {
        let file = link_file_name("xdp_fwd6", "veth-1abc-1", 42);
        assert_eq!(file, "xdp_fwd6@veth-1abc-1@42");
        let parsed = parse_link_file_name(&file, "xdp_");
        assert_eq!(parsed, Some(("xdp_fwd6".into(), "veth-1abc-1".into(), 42)));
    }

    #[test]
    fn dotted_interface_names_get_no_dot_in_the_pin() {
        let file = link_file_name("xdp_count", "eth0.100", 7);
        assert!(!file.contains('.'), "bpffs refuses dots: {file}");
        let parsed = parse_link_file_name(&file, "xdp_");
        assert_eq!(parsed, Some(("xdp_count".into(), "eth0.100".into(), 7)));
    }

    #[test]
    fn foreign_files_are_not_links() {
        assert_eq!(parse_link_file_name("IFACE_COUNTERS", "xdp_"), None);
        assert_eq!(parse_link_file_name("xdp_count@eth0@x", "xdp_"), None);
        assert_eq!(parse_link_file_name("eth0@3", "xdp_"), None);
        assert_eq!(parse_link_file_name("other@eth0@3", "xdp_"), None);
        assert_eq!(
            parse_link_file_name("tc_nat64_l3@wg0@3", "xdp_"),
            None,
            "TC links are not XDP attachments"
        );
        assert_eq!(
            parse_link_file_name("tc_nat64_l3@wg0@3", "tc_"),
            Some(("tc_nat64_l3".into(), "wg0".into(), 3))
        );
    }
}
