//! Announcing moved addresses after a takeover, so the upstream router switches to the new
//! owner's MAC at once instead of waiting for its neighbour entry to go stale: unsolicited
//! neighbour advertisements (RFC 4861 §7.2.6, override flag, to all-nodes ff02::1) for IPv6
//! and gratuitous ARP (RFC 5227 §3 "ARP announcement", request and reply) for IPv4.
//!
//! Frames are written with an `AF_PACKET` socket opened inside the gateway namespace; no
//! external tool is involved.

use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The one's-complement sum used by ICMPv6 (RFC 1071).
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let bytes = chunks.iter().flat_map(|c| c.iter().copied());
    let mut pending: Option<u8> = None;
    for byte in bytes {
        match pending.take() {
            Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
            None => pending = Some(byte),
        }
    }
    if let Some(high) = pending {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An unsolicited neighbour advertisement for `target` (override set, solicited not set),
/// carrying `mac` as the target link-layer address, from `target` to ff02::1.
pub fn neighbour_advertisement(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let len = u32::try_from(icmp.len()).unwrap_or(0);
    let pseudo_tail = [0, 0, 0, 58];
    let sum = checksum(&[
        &target.octets(),
        &ALL_NODES.octets(),
        &len.to_be_bytes(),
        &pseudo_tail,
        &icmp,
    ]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (ND requires it)
    ip.extend_from_slice(&target.octets());
    ip.extend_from_slice(&ALL_NODES.octets());
    ip.extend_from_slice(&icmp);
    ethernet(ALL_NODES_MAC, mac, ETH_P_IPV6, &ip)
}

/// A gratuitous ARP for `ip` at `mac`: operation 1 (request) or 2 (reply), sender and target
/// protocol address both `ip`, broadcast.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr, operation: u16) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4];
    arp.extend_from_slice(&operation.to_be_bytes());
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&ip.octets());
    let target_mac = if operation == 2 { mac } else { [0; 6] };
    arp.extend_from_slice(&target_mac);
    arp.extend_from_slice(&ip.octets());
    ethernet(BROADCAST_MAC, mac, ETH_P_ARP, &arp)
}

/// Every frame announcing `ipv6` and `ipv4` at `mac`.
pub fn frames(mac: [u8; 6], ipv6: &[Ipv6Addr], ipv4: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = ipv6
        .iter()
        .map(|a| neighbour_advertisement(mac, *a))
        .collect();
    for ip in ipv4 {
        frames.push(gratuitous_arp(mac, *ip, 1));
        frames.push(gratuitous_arp(mac, *ip, 2));
    }
    frames
}

/// A raw packet socket bound to nothing (it only sends); closed on drop.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    /// Opens the socket in the calling thread's network namespace.
    fn open() -> Result<PacketSocket> {
        // SAFETY: socket(2) with constant arguments; protocol 0 receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot open a packet socket");
        }
        // SAFETY: fd is a freshly opened descriptor we own.
        Ok(PacketSocket(unsafe {
            std::os::fd::FromRawFd::from_raw_fd(fd)
        }))
    }

    /// Sends one whole Ethernet frame out of interface `ifindex`.
    fn send(&self, ifindex: u32, frame: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        if frame.len() < 14 {
            bail!("a frame needs an Ethernet header");
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = i32::try_from(ifindex).context("ifindex out of range")?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid fd, buffer and address of the stated sizes.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot send an announcement on ifindex {ifindex}"));
        }
        Ok(())
    }
}

/// Sends the announcements out of `link` of namespace `namespace` (the gateway's uplink).
pub fn announce(namespace: &str, link: &str, ipv6: &[Ipv6Addr], ipv4: &[Ipv4Addr]) -> Result<()> {
    let (link, ipv6, ipv4) = (link.to_string(), ipv6.to_vec(), ipv4.to_vec());
    crate::netlink::netns::run_in(Some(namespace), move || async move {
        let handle = crate::netlink::netns::connect()?;
        let facts = crate::dataplane::gateway::observe(&handle).await?;
        let fact = facts
            .links
            .get(&link)
            .with_context(|| format!("link {link} to announce on is missing"))?;
        let socket = PacketSocket::open()?;
        for frame in frames(fact.mac, &ipv6, &ipv4) {
            socket.send(fact.ifindex, &frame)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

    #[test]
    fn neighbour_advertisement_has_override_flag_hop_limit_and_a_valid_checksum() {
        let target: Ipv6Addr = "2a02:1802:5e:0:1000::1".parse().unwrap();
        let frame = neighbour_advertisement(MAC, target);
        assert_eq!(&frame[..6], &ALL_NODES_MAC);
        assert_eq!(&frame[6..12], &MAC);
        let ip = &frame[14..];
        assert_eq!(ip[6], 58);
        assert_eq!(ip[7], 255);
        assert_eq!(&ip[8..24], &target.octets());
        assert_eq!(&ip[24..40], &ALL_NODES.octets());
        let icmp = &ip[40..];
        assert_eq!(icmp.len(), 32);
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x20, "override set, router and solicited clear");
        assert_eq!(&icmp[8..24], &target.octets());
        assert_eq!(&icmp[24..26], &[2, 1]);
        assert_eq!(&icmp[26..32], &MAC);
        // Summing the packet including its checksum over the pseudo-header gives 0.
        let len = (icmp.len() as u32).to_be_bytes();
        let verify = checksum(&[
            &target.octets(),
            &ALL_NODES.octets(),
            &len,
            &[0, 0, 0, 58],
            icmp,
        ]);
        assert_eq!(verify, 0);
    }

    #[test]
    fn gratuitous_arp_names_the_address_as_sender_and_target() {
        let ip: Ipv4Addr = "185.69.166.123".parse().unwrap();
        let frame = gratuitous_arp(MAC, ip, 1);
        assert_eq!(&frame[..6], &BROADCAST_MAC);
        assert_eq!(&frame[12..14], &ETH_P_ARP.to_be_bytes());
        let arp = &frame[14..];
        assert_eq!(arp.len(), 28);
        assert_eq!(&arp[6..8], &[0, 1]);
        assert_eq!(&arp[8..14], &MAC);
        assert_eq!(&arp[14..18], &ip.octets());
        assert_eq!(&arp[18..24], &[0; 6]);
        assert_eq!(&arp[24..28], &ip.octets());
        assert_eq!(&gratuitous_arp(MAC, ip, 2)[14 + 18..14 + 24], &MAC);
    }

    #[test]
    fn frames_cover_every_address() {
        let v6: Vec<Ipv6Addr> = vec!["fe80::1:1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let v4: Vec<Ipv4Addr> = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(frames(MAC, &v6, &v4).len(), 4);
        assert_eq!(frames(MAC, &v6, &[]).len(), 2);
    }
}
