//! IPv4 packets for the translator's tests: builders for TCP, ICMP echo and ICMP errors, and
//! a checker that recomputes every checksum of a packet from scratch (IPv4 header, TCP/UDP
//! with their pseudo-header, ICMP, and inside an ICMP error the quoted packet's own), so a
//! translated packet can be compared with what a real stack would accept.

use crate::packet::internet_checksum;
use std::net::Ipv4Addr;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// Destination Unreachable code "fragmentation needed and DF set".
pub const ICMP_FRAG_NEEDED: u8 = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An IPv4 header (no options, DF set) with a correct checksum, followed by `payload`.
/// L4 checksums in `payload` are the caller's business (see [`ipv4_tcp`] and friends).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total_len = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, ttl, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// A TCP segment (20-byte header, `flags`, then `data`) in IPv4, all checksums correct.
pub fn ipv4_tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    ttl: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + data.len());
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // sequence number
    tcp.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(data);
    let mut ip = ipv4(src, dst, IPPROTO_TCP, ttl, &tcp);
    let csum = l4_checksum(&ip).expect("a TCP packet");
    ip[20 + 16..20 + 18].copy_from_slice(&csum.to_be_bytes());
    ip
}

/// An ICMP message: type, code, the 4 bytes after the checksum (`rest`: identifier and
/// sequence of an echo, the next-hop MTU of Fragmentation Needed), then `body`.
pub fn ipv4_icmp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(body);
    let csum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    ipv4(src, dst, IPPROTO_ICMP, ttl, &icmp)
}

/// An ICMP echo request or reply with `id` and `seq` and a few bytes of data.
pub fn ipv4_echo(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    id: u16,
    seq: u16,
    ttl: u8,
) -> Vec<u8> {
    let [i0, i1] = id.to_be_bytes();
    let [s0, s1] = seq.to_be_bytes();
    ipv4_icmp(src, dst, ttl, icmp_type, 0, [i0, i1, s0, s1], b"ping-data")
}

/// The TCP/UDP checksum (with the IPv4 pseudo-header) or ICMP checksum of the IPv4 packet
/// `ip`, computed from scratch with the checksum field taken as zero; None for other
/// protocols or a packet too short for its L4 header. A UDP result of 0 is given as 0xffff.
pub fn l4_checksum(ip: &[u8]) -> Option<u16> {
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let l4 = ip.get(header_len..total)?;
    let (offset, pseudo) = match ip[9] {
        IPPROTO_TCP => (16, true),
        IPPROTO_UDP => (6, true),
        IPPROTO_ICMP => (2, false),
        _ => return None,
    };
    if l4.len() < offset + 2 {
        return None;
    }
    let mut summed = Vec::with_capacity(12 + l4.len());
    if pseudo {
        summed.extend_from_slice(&ip[12..20]);
        summed.extend_from_slice(&[0, ip[9]]);
        summed.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    }
    let start = summed.len();
    summed.extend_from_slice(l4);
    summed[start + offset..start + offset + 2].copy_from_slice(&[0, 0]);
    let csum = internet_checksum(&summed);
    Some(if ip[9] == IPPROTO_UDP && csum == 0 {
        0xffff
    } else {
        csum
    })
}

/// The IPv4 header checksum of `ip` computed from scratch (field taken as zero); None when
/// the header is truncated or its IHL is below 5.
pub fn header_checksum(ip: &[u8]) -> Option<u16> {
    let header_len = usize::from(ip.first()? & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    let mut header = ip.get(..header_len)?.to_vec();
    header[10..12].copy_from_slice(&[0, 0]);
    Some(internet_checksum(&header))
}

/// Checks every checksum of the IPv4 packet `ip` against a recomputation: the header, the
/// TCP/UDP/ICMP checksum, and for an ICMP error the quoted packet's header checksum and,
/// when the quote holds the whole packet, its L4 checksum. Err says which one is wrong.
pub fn verify_checksums(ip: &[u8]) -> Result<(), String> {
    let field = |at: usize| u16::from_be_bytes([ip[at], ip[at + 1]]);
    let header = header_checksum(ip).ok_or("truncated IPv4 header")?;
    if header != field(10) {
        return Err(format!(
            "IPv4 header checksum {:#06x}, recomputed {header:#06x}",
            field(10)
        ));
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let Some(l4) = l4_checksum(ip) else {
        return Ok(());
    };
    let at = header_len
        + match ip[9] {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            _ => 2,
        };
    let stored = field(at);
    let udp_without_checksum = ip[9] == IPPROTO_UDP && stored == 0;
    if stored != l4 && !udp_without_checksum {
        return Err(format!(
            "protocol {} checksum {stored:#06x}, recomputed {l4:#06x}",
            ip[9]
        ));
    }
    if ip[9] == IPPROTO_ICMP && is_icmp_error(ip[header_len]) {
        let quoted = &ip[header_len + 8..];
        verify_quoted(quoted).map_err(|e| format!("quoted packet: {e}"))?;
    }
    Ok(())
}

fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | 12)
}

/// The packet quoted in an ICMP error: its header always, its L4 checksum when complete.
fn verify_quoted(quoted: &[u8]) -> Result<(), String> {
    let total = usize::from(u16::from_be_bytes([
        *quoted.get(2).ok_or("truncated")?,
        *quoted.get(3).ok_or("truncated")?,
    ]));
    if quoted.len() >= total {
        return verify_checksums(&quoted[..total]);
    }
    let header = header_checksum(quoted).ok_or("truncated IPv4 header")?;
    let stored = u16::from_be_bytes([quoted[10], quoted[11]]);
    if header != stored {
        return Err(format!(
            "IPv4 header checksum {stored:#06x}, recomputed {header:#06x}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Ipv4Addr {
        Ipv4Addr::new(10, 26, 188, 2)
    }
    fn b() -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 7)
    }

    #[test]
    fn built_packets_verify_and_a_flipped_bit_is_caught() {
        let packets = [
            ipv4_tcp(a(), b(), 40000, 80, TCP_SYN, 64, b""),
            crate::packet::ipv4_udp(a(), b(), 5353, 53, 64, b"query"),
            ipv4_echo(a(), b(), ICMP_ECHO_REQUEST, 77, 1, 64),
        ];
        for p in packets {
            verify_checksums(&p).unwrap();
            for at in [13, 21, p.len() - 1] {
                let mut bad = p.clone();
                bad[at] ^= 0x10;
                assert!(verify_checksums(&bad).is_err(), "byte {at} flipped");
            }
        }
    }

    #[test]
    fn an_icmp_error_checks_the_quoted_packet_too() {
        let quoted = ipv4_tcp(b(), a(), 40000, 80, TCP_SYN, 1, b"");
        let error = ipv4_icmp(b(), a(), 64, ICMP_TIME_EXCEEDED, 0, [0; 4], &quoted);
        verify_checksums(&error).unwrap();
        let mut bad_inner = quoted.clone();
        bad_inner[20 + 16] ^= 1;
        let error = ipv4_icmp(b(), a(), 64, ICMP_TIME_EXCEEDED, 0, [0; 4], &bad_inner);
        assert!(
            verify_checksums(&error)
                .unwrap_err()
                .starts_with("quoted packet")
        );
    }
}
