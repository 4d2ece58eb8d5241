//! IPv6 packets for NAT64 tests: builders beyond `packet` and checksum checks computed
//! from scratch (the translators update checksums incrementally; these recompute them).

use crate::packet::{IPPROTO_ICMPV6, IPPROTO_UDP, internet_checksum, ipv6};
use std::net::Ipv6Addr;

pub const IPPROTO_TCP: u8 = 6;

/// A TCP segment (20-byte header, `flags`, then `data`) in IPv6 with a correct checksum.
pub fn ipv6_tcp(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    hop_limit: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + data.len());
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(data);
    let mut ip = ipv6(src, dst, IPPROTO_TCP, hop_limit, &tcp);
    let csum = l4_checksum6(&ip).expect("a TCP packet");
    ip[40 + 16..40 + 18].copy_from_slice(&csum.to_be_bytes());
    ip
}

/// Offset of the checksum inside the L4 header of `next_header`.
fn checksum_offset(next_header: u8) -> Option<usize> {
    match next_header {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        IPPROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// The TCP/UDP/ICMPv6 checksum of the IPv6 packet `ip` (no extension headers), computed
/// from scratch over the payload its header announces; None when it is not whole.
pub fn l4_checksum6(ip: &[u8]) -> Option<u16> {
    let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
    let next_header = ip[6];
    let at = checksum_offset(next_header)?;
    let mut l4 = ip.get(40..40 + len)?.to_vec();
    l4.get_mut(at..at + 2)?.copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(40 + len);
    pseudo.extend_from_slice(&ip[8..40]);
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(&l4);
    let csum = internet_checksum(&pseudo);
    Some(if csum == 0 && next_header == IPPROTO_UDP {
        0xffff
    } else {
        csum
    })
}

/// Checks the L4 checksum of `ip` and, for an ICMPv6 error, that the quoted packet is
/// IPv6 and its L4 checksum right when the whole packet is quoted. Err says what is wrong.
pub fn verify_checksums6(ip: &[u8]) -> Result<(), String> {
    if ip.len() < 48 || ip[0] >> 4 != 6 {
        return Err("not an IPv6 packet".into());
    }
    let at = 40 + checksum_offset(ip[6]).ok_or("unknown next header")?;
    let stored = u16::from_be_bytes([ip[at], ip[at + 1]]);
    let computed = l4_checksum6(ip).ok_or("payload shorter than announced")?;
    if stored != computed {
        return Err(format!(
            "next header {} checksum {stored:#06x}, recomputed {computed:#06x}",
            ip[6]
        ));
    }
    if ip[6] == IPPROTO_ICMPV6 && ip[40] < 128 {
        let quoted = &ip[48..];
        if quoted.first().map(|b| b >> 4) != Some(6) {
            return Err("the quoted packet is not IPv6".into());
        }
        let whole = quoted.len() >= 40 + usize::from(u16::from_be_bytes([quoted[4], quoted[5]]));
        if whole {
            verify_checksums6(quoted).map_err(|e| format!("quoted packet: {e}"))?;
        }
    }
    Ok(())
}
