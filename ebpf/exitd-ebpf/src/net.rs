//! Packet headers and bounds-checked access to them.

use aya_ebpf::programs::{TcContext, XdpContext};

pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub ether_type: u16,
}

impl EthHdr {
    pub const LEN: usize = 14;
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Hdr {
    pub const LEN: usize = 40;
}

/// A program context with direct packet access (XDP and TC).
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// A pointer to a `T` at `offset` in the packet, or None when it would reach past the end.
/// The explicit comparison against `data_end` is what lets the verifier accept the access.
#[inline(always)]
pub fn ptr_at<T, C: Packet>(ctx: &C, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 header without options (the translator leaves packets with options to the kernel).
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    /// Kept as stored: checksums are updated on the raw 16-bit words.
    pub check: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    pub const LEN: usize = 20;
}

/// The first 8 bytes of TCP, UDP and ICMP headers are what the translator reads: ports (or
/// the ICMP type, code and echo identifier) and, for UDP and ICMP, the checksum.
#[repr(C)]
pub struct L4Head {
    pub word0: u16,
    pub word1: u16,
    pub word2: u16,
    pub word3: u16,
}

/// Offset of the checksum in a TCP header; the flags byte is at 13.
pub const TCP_CSUM_OFF: usize = 16;
pub const TCP_FLAGS_OFF: usize = 13;
pub const TCP_HDR_LEN: usize = 20;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Reads the EtherType of the frame, or None when the frame is shorter than a header.
#[inline(always)]
pub fn ether_type<C: Packet>(ctx: &C) -> Option<u16> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    Some(u16::from_be(unsafe { (*eth).ether_type }))
}

/// Incremental Internet checksum update (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
/// Words are taken exactly as stored in the packet: one's-complement sums do not depend on
/// byte order as long as every word is read the same way.
#[derive(Clone, Copy)]
pub struct CsumDelta(u32);

impl CsumDelta {
    #[inline(always)]
    pub const fn new() -> CsumDelta {
        CsumDelta(0)
    }

    #[inline(always)]
    pub const fn word(self, old: u16, new: u16) -> CsumDelta {
        CsumDelta(self.0 + (!old) as u32 + new as u32)
    }

    #[inline(always)]
    pub const fn addr(self, old: [u8; 4], new: [u8; 4]) -> CsumDelta {
        self.word(
            u16::from_ne_bytes([old[0], old[1]]),
            u16::from_ne_bytes([new[0], new[1]]),
        )
        .word(
            u16::from_ne_bytes([old[2], old[3]]),
            u16::from_ne_bytes([new[2], new[3]]),
        )
    }

    /// Adds a 32-bit partial sum (of words as stored).
    #[inline(always)]
    pub const fn plus(self, sum: u32) -> CsumDelta {
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        self.word(0, folded as u16)
    }

    /// Subtracts a 32-bit partial sum.
    #[inline(always)]
    pub const fn minus(self, sum: u32) -> CsumDelta {
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        self.word(folded as u16, 0)
    }

    /// An IPv6 address replaced by another (pass zeros to add or remove one).
    #[inline(always)]
    pub const fn addr16(self, old: [u8; 16], new: [u8; 16]) -> CsumDelta {
        let mut d = self;
        let mut i = 0;
        while i < 16 {
            d = d.word(
                u16::from_ne_bytes([old[i], old[i + 1]]),
                u16::from_ne_bytes([new[i], new[i + 1]]),
            );
            i += 2;
        }
        d
    }

    /// An IPv4 address replaced by an IPv6 one, as when a pseudo-header changes family.
    #[inline(always)]
    pub const fn addr4_to_16(self, old: [u8; 4], new: [u8; 16]) -> CsumDelta {
        self.addr(old, [0; 4]).addr16([0; 16], new)
    }

    /// An IPv6 address replaced by an IPv4 one.
    #[inline(always)]
    pub const fn addr16_to_4(self, old: [u8; 16], new: [u8; 4]) -> CsumDelta {
        self.addr16(old, [0; 16]).addr([0; 4], new)
    }

    /// The checksum field after the recorded changes.
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        let mut sum = (!check) as u32 + self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}

pub const IPPROTO_FRAGMENT: u8 = 44;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAM_PROBLEM: u8 = 4;

/// The Internet checksum of `words` (16-bit words as stored), not complemented: the sum a
/// header checksum is the complement of.
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        sum += words[i] as u32;
        i += 1;
    }
    sum
}

/// Folds a 32-bit one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let mut s = (sum & 0xffff) + (sum >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}
