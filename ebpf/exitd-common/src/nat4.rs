//! IPv4 NAT of the gateway: tenant `10.n0.n1.0/24` networks translated to the gateway's
//! public IPv4 (SNAT), replies translated back, port forwards into tenant networks.
//!
//! Addresses and ports are kept exactly as they appear in packets (network byte order), so
//! the program never swaps bytes on the hot path; the agent converts when it reads or writes.

/// Map names (also their pin file names).
pub const ROUTES4_MAP: &str = "ROUTES4";
pub const LOCAL4_MAP: &str = "LOCAL4";
pub const NAT4_CONFIG_MAP: &str = "NAT4_CONFIG";
pub const CT4_MAP: &str = "CT4";
pub const PORT_FWD4_MAP: &str = "PORT_FWD4";
pub const NAT4_STATS_MAP: &str = "NAT4_STATS";

/// Tenant /24 networks the gateway routes (a whole /48's worth of nibbles).
pub const MAX_ROUTES4: u32 = 65_536;
/// The gateway's own IPv4 addresses.
pub const MAX_LOCAL4: u32 = 1024;
/// Port forwards.
pub const MAX_PORT_FWD4: u32 = 4096;
/// Connection-tracking entries in the object as built: two per connection (one per
/// direction). The agent sizes the map from `[dataplane.nat] max_connections` when it
/// creates it; the object's default keeps programs loaded by tests small.
pub const DEFAULT_CT4_ENTRIES: u32 = 65_536;

/// Where an IPv4 route sends packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route4 {
    /// Egress ifindex (a TX_PORTS key).
    pub ifindex: u32,
    /// Tenant number: packets between different tenants are dropped (isolation).
    pub tenant: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// `crate::ROUTE_NEIGH_KNOWN` when `dst_mac` is valid.
    pub flags: u32,
}

/// `Route4::flags`: the network is behind a link XDP cannot redirect to (a WireGuard
/// interface, where Parker nodes' IPv4 ranges live): replies are translated and handed to
/// the kernel, which routes them. `ROUTE_NEIGH_KNOWN` does not apply.
pub const ROUTE4_VIA_KERNEL: u32 = 2;

/// `Nat4Config::flags`: translation is on (a public IPv4 is configured).
pub const NAT4_ENABLED: u32 = 1;

/// Timeouts in seconds, indexed by [`Timeout`].
pub const TIMEOUT_COUNT: usize = 4;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    TcpEstablished = 0,
    TcpTransitory = 1,
    Udp = 2,
    Icmp = 3,
}

/// The single entry of NAT4_CONFIG.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat4Config {
    /// The public address tenants are translated to (network order bytes).
    pub public: [u8; 4],
    /// First and last port (host order) the translator may hand out.
    pub port_min: u16,
    pub port_max: u16,
    pub flags: u32,
    /// Toward the upstream router (IPv4 default route).
    pub upstream: Route4,
    pub timeouts: [u32; TIMEOUT_COUNT],
}

impl Nat4Config {
    /// Idle timeout, in nanoseconds, of a connection of protocol `proto` whose TCP state is
    /// `state`: the one rule the program expires entries by and the agent reports with.
    #[inline(always)]
    pub fn timeout_ns(&self, proto: u8, state: u8) -> u64 {
        let which = match proto {
            6 if state == TCP_ESTABLISHED => Timeout::TcpEstablished,
            6 => Timeout::TcpTransitory,
            17 => Timeout::Udp,
            _ => Timeout::Icmp,
        };
        self.timeouts[which as usize] as u64 * 1_000_000_000
    }
}

/// `CtKey::dir`: the key of a packet leaving a tenant (before translation).
pub const CT_OUT: u8 = 0;
/// `CtKey::dir`: the key of a packet arriving from upstream (before translation).
pub const CT_IN: u8 = 1;

/// A connection as one direction's packets carry it, before translation. For ICMP echo the
/// identifier is the source "port" of requests and the destination "port" of replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub proto: u8,
    pub dir: u8,
    pub pad: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network byte order, as in the packet.
    pub sport: u16,
    pub dport: u16,
}

impl CtKey {
    /// The key replies to this outgoing packet carry once it is translated to
    /// `public:port` (`port` in network order).
    #[inline(always)]
    pub fn reply(&self, public: [u8; 4], port: u16) -> CtKey {
        CtKey {
            proto: self.proto,
            dir: CT_IN,
            pad: [0; 2],
            src: self.dst,
            dst: public,
            sport: self.dport,
            dport: port,
        }
    }
}

/// TCP states an entry tracks; they choose the timeout.
pub const TCP_SYN: u8 = 0;
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSING: u8 = 2;

/// `CtEntry::flags`: created by a port forward (not by a tenant's outgoing packet).
pub const CT_PORT_FORWARD: u8 = 1;
/// `CtEntry::flags`: a NAT64 connection (the other direction's entry is in CT6).
pub const CT_NAT64: u8 = 2;

/// What a packet matching a `CtKey` is translated to: for an outgoing packet its new source,
/// for an incoming one its new destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: u16,
    /// TCP_* for TCP; 0 otherwise.
    pub state: u8,
    pub flags: u8,
    /// bpf_ktime_get_ns of the last packet in this direction.
    pub last_seen: u64,
    /// For outgoing entries the tenant link packets must arrive on (anti-spoofing); for
    /// incoming entries 0.
    pub ifindex: u32,
    pub pad: u32,
    /// For incoming entries of NAT64 connections (`CT_NAT64`): the node's IPv6 address
    /// (`addr` is then unused); zero otherwise.
    pub addr6: [u8; 16],
}

/// A forwarded public port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortFwdKey {
    pub proto: u8,
    pub pad: u8,
    /// Network byte order.
    pub port: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortFwdTarget {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: u16,
    pub pad: u16,
}

/// What the translator did with an IPv4 packet: indexes into NAT4_STATS.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat4Verdict {
    /// A tenant's packet translated and sent upstream.
    Out = 0,
    /// A reply (or port-forwarded packet) translated and sent to the tenant.
    In = 1,
    /// An ICMP error about a translated connection, translated including its inner header.
    IcmpError = 2,
    /// A new connection from a tenant.
    NewOut = 3,
    /// A new connection through a port forward.
    NewForward = 4,
    /// An expired entry reclaimed on lookup.
    Expired = 5,
    /// Dropped: no free public port for a new connection.
    DropExhausted = 6,
    /// Dropped: from one tenant to another tenant's network.
    DropIsolation = 7,
    /// Dropped: the redirect was refused (egress port missing).
    DropRedirect = 8,
    /// Not for the translator (not from a tenant, not to the public address).
    PassNotNat = 9,
    /// Truncated or invalid headers.
    PassMalformed = 10,
    /// IP options: the kernel handles them.
    PassOptions = 11,
    /// Fragments: the kernel reassembles them.
    PassFragment = 12,
    /// TTL ≤ 1: the kernel sends Time Exceeded.
    PassTtl = 13,
    /// Protocol other than TCP, UDP, ICMP echo / errors.
    PassProtocol = 14,
    /// No translation state (e.g. TCP without SYN, unknown inbound port).
    PassNoState = 15,
    /// Next hop's MAC unknown yet.
    PassNoNeighbour = 16,
    /// To the gateway itself or within one tenant.
    PassLocal = 17,
    /// Arrived on a link the tenant's network is not behind.
    PassSpoofed = 18,
    /// A reply (or ICMP error) of a NAT64 connection: translated to IPv6 and counted in
    /// NAT64_STATS.
    Nat64 = 19,
}

pub const NAT4_VERDICT_COUNT: u32 = 20;

impl Nat4Verdict {
    pub const ALL: [Nat4Verdict; NAT4_VERDICT_COUNT as usize] = [
        Nat4Verdict::Out,
        Nat4Verdict::In,
        Nat4Verdict::IcmpError,
        Nat4Verdict::NewOut,
        Nat4Verdict::NewForward,
        Nat4Verdict::Expired,
        Nat4Verdict::DropExhausted,
        Nat4Verdict::DropIsolation,
        Nat4Verdict::DropRedirect,
        Nat4Verdict::PassNotNat,
        Nat4Verdict::PassMalformed,
        Nat4Verdict::PassOptions,
        Nat4Verdict::PassFragment,
        Nat4Verdict::PassTtl,
        Nat4Verdict::PassProtocol,
        Nat4Verdict::PassNoState,
        Nat4Verdict::PassNoNeighbour,
        Nat4Verdict::PassLocal,
        Nat4Verdict::PassSpoofed,
        Nat4Verdict::Nat64,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Nat4Verdict::Out => "out",
            Nat4Verdict::In => "in",
            Nat4Verdict::IcmpError => "icmp_error",
            Nat4Verdict::NewOut => "new_out",
            Nat4Verdict::NewForward => "new_forward",
            Nat4Verdict::Expired => "expired",
            Nat4Verdict::DropExhausted => "drop_exhausted",
            Nat4Verdict::DropIsolation => "drop_isolation",
            Nat4Verdict::DropRedirect => "drop_redirect",
            Nat4Verdict::PassNotNat => "pass_not_nat",
            Nat4Verdict::PassMalformed => "pass_malformed",
            Nat4Verdict::PassOptions => "pass_options",
            Nat4Verdict::PassFragment => "pass_fragment",
            Nat4Verdict::PassTtl => "pass_ttl",
            Nat4Verdict::PassProtocol => "pass_protocol",
            Nat4Verdict::PassNoState => "pass_no_state",
            Nat4Verdict::PassNoNeighbour => "pass_no_neighbour",
            Nat4Verdict::PassLocal => "pass_local",
            Nat4Verdict::PassSpoofed => "pass_spoofed",
            Nat4Verdict::Nat64 => "nat64",
        }
    }
}
