//! IPv4 NAT of the gateway, in XDP, on the same links as the IPv6 forwarder.
//!
//! Why XDP on ingress in both directions rather than TC egress: every packet to translate
//! enters the gateway on one of its own links (a tenant's `to-*` veth going out, the uplink
//! coming back), so the translation, the route lookup and the redirect happen in one pass
//! before the kernel allocates an skb — the same pass that forwards IPv6. TC egress would
//! need the kernel to route the packet first, which is the cost we avoid. The gateway itself
//! sends no tenant traffic, so nothing needs translating on egress.
//!
//! Connections are tracked in one LRU hash, two entries per connection (one per
//! direction, keyed by the packet as it arrives). Entries expire lazily: a lookup that
//! finds a stale entry (and a stale partner) deletes both; the LRU evicts the oldest when
//! the map is full. No userspace scan is needed for correctness.
//!
//! What the translator does not decide goes to the kernel with XDP_PASS, counted by reason
//! (fragments, IP options, TTL ≤ 1, unknown neighbours, packets without state): the kernel's
//! own NAT (nftables, with a port range disjoint from ours) is the fallback.

use crate::{
    fwd6::{count, TX_PORTS},
    net::{
        self, ptr_at, CsumDelta, EthHdr, Ipv4Hdr, L4Head, TCP_ACK, TCP_CSUM_OFF, TCP_FIN,
        TCP_FLAGS_OFF, TCP_HDR_LEN, TCP_RST, TCP_SYN,
    },
};
use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, BPF_NOEXIST},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::btf_map,
    programs::XdpContext,
};
use exitd_common::{
    nat4::{
        CtEntry, CtKey, Nat4Config, Nat4Verdict, PortFwdKey, PortFwdTarget, Route4, CT_IN,
        CT_NAT64, CT_OUT, CT_PORT_FORWARD, DEFAULT_CT4_ENTRIES, MAX_LOCAL4, MAX_PORT_FWD4,
        MAX_ROUTES4, NAT4_ENABLED, NAT4_VERDICT_COUNT, ROUTE4_VIA_KERNEL, TCP_CLOSING,
        TCP_ESTABLISHED,
    },
    Counters, ROUTE_NEIGH_KNOWN,
};

/// Tenant /24 networks, keyed by their network address.
#[btf_map]
static ROUTES4: HashMap<[u8; 4], Route4, { MAX_ROUTES4 as usize }> = HashMap::new();

/// The gateway's own IPv4 addresses: tenants' packets to them belong to the kernel.
#[btf_map]
pub(crate) static LOCAL4: HashMap<[u8; 4], u32, { MAX_LOCAL4 as usize }> = HashMap::new();

/// Public address, port range, upstream next hop and timeouts.
#[btf_map]
pub(crate) static NAT4_CONFIG: Array<Nat4Config, 1> = Array::new();

/// Connection tracking: two entries per connection, see the module comment.
#[btf_map]
pub(crate) static CT4: LruHashMap<CtKey, CtEntry, { DEFAULT_CT4_ENTRIES as usize }> =
    LruHashMap::new();

/// Public ports forwarded into tenant networks.
#[btf_map]
static PORT_FWD4: HashMap<PortFwdKey, PortFwdTarget, { MAX_PORT_FWD4 as usize }> = HashMap::new();

/// Packets and bytes per translator verdict, per CPU.
#[btf_map]
pub(crate) static NAT4_STATS: PerCpuArray<Counters, { NAT4_VERDICT_COUNT as usize }> =
    PerCpuArray::new();

/// How many ports a new connection tries before it is dropped as exhausted: the source port
/// first, then consecutive ports from a random start (bounded so the verifier accepts it).
const PORT_TRIES: u32 = 32;

const L3: usize = EthHdr::LEN;
pub(crate) const L4: usize = EthHdr::LEN + Ipv4Hdr::LEN;

/// Handles an IPv4 frame, or returns None when no NAT is configured (the caller then counts
/// it as it always did).
#[inline(always)]
pub fn xdp_nat4(ctx: &XdpContext) -> Option<u32> {
    let config = NAT4_CONFIG.get(0)?;
    if config.flags & NAT4_ENABLED == 0 {
        return None;
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, action) = match try_nat4(ctx, config) {
        Ok(done) => done,
        Err(reason) => (reason, action_for(reason)),
    };
    count(&NAT4_STATS, verdict as u32, len);
    Some(action)
}

/// Refusals are dropped; everything else undecided goes to the kernel.
#[inline(always)]
fn action_for(reason: Nat4Verdict) -> u32 {
    match reason {
        Nat4Verdict::DropExhausted | Nat4Verdict::DropIsolation => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// A checked IPv4 packet: header pointer and the L4 protocol.
pub(crate) struct Packet {
    pub ip: *mut Ipv4Hdr,
    pub proto: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
}

#[inline(always)]
fn try_nat4(ctx: &XdpContext, cfg: &Nat4Config) -> Result<(Nat4Verdict, u32), Nat4Verdict> {
    let pkt = parse::<_, L3>(ctx, ctx.data_end() - ctx.data())?;
    if pkt.dst == cfg.public {
        return inbound(ctx, cfg, &pkt);
    }
    outbound(ctx, cfg, &pkt)
}

/// Checks the IPv4 header at `OFF` of a packet of `total` bytes: version, no options,
/// length within the packet, not a fragment.
#[inline(always)]
pub(crate) fn parse<C: net::Packet, const OFF: usize>(
    ctx: &C,
    total: usize,
) -> Result<Packet, Nat4Verdict> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, OFF).ok_or(Nat4Verdict::PassMalformed)?;
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let (version_ihl, tot_len, frag_off) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frag_off),
        )
    };
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return Err(Nat4Verdict::PassMalformed);
    }
    if version_ihl & 0x0f > 5 {
        return Err(Nat4Verdict::PassOptions);
    }
    if tot_len < Ipv4Hdr::LEN + 8 || OFF + tot_len > total {
        return Err(Nat4Verdict::PassMalformed);
    }
    // More-fragments flag or a fragment offset.
    if frag_off & 0x3fff != 0 {
        return Err(Nat4Verdict::PassFragment);
    }
    // SAFETY: as above.
    unsafe {
        Ok(Packet {
            ip,
            proto: (*ip).protocol,
            src: (*ip).src,
            dst: (*ip).dst,
            ttl: (*ip).ttl,
        })
    }
}

/// The first 8 bytes after the IPv4 header (present: parse checked tot_len ≥ 28).
#[inline(always)]
pub(crate) fn l4_head<C: net::Packet, const OFF: usize>(
    ctx: &C,
) -> Result<*mut L4Head, Nat4Verdict> {
    ptr_at(ctx, OFF + Ipv4Hdr::LEN).ok_or(Nat4Verdict::PassMalformed)
}

/// The TCP flags byte, or PassMalformed when the TCP header is incomplete.
#[inline(always)]
fn tcp_flags<C: net::Packet, const OFF: usize>(ctx: &C, pkt: &Packet) -> Result<u8, Nat4Verdict> {
    // SAFETY: parse checked the header; tot_len must cover a whole TCP header.
    let tot_len = u16::from_be_bytes(unsafe { (*pkt.ip).tot_len }) as usize;
    if tot_len < Ipv4Hdr::LEN + TCP_HDR_LEN {
        return Err(Nat4Verdict::PassMalformed);
    }
    let flags: *const u8 =
        ptr_at(ctx, OFF + Ipv4Hdr::LEN + TCP_FLAGS_OFF).ok_or(Nat4Verdict::PassMalformed)?;
    // SAFETY: ptr_at checked the byte is inside the packet.
    Ok(unsafe { *flags })
}

/// A tenant's packet leaving through the uplink.
#[inline(always)]
fn outbound(
    ctx: &XdpContext,
    cfg: &Nat4Config,
    pkt: &Packet,
) -> Result<(Nat4Verdict, u32), Nat4Verdict> {
    let verdict = translate_out::<_, L3>(ctx, cfg, pkt, ctx.ingress_ifindex() as u32)?;
    redirect(ctx, &cfg.upstream, verdict)
}

/// Translates a packet from a tenant (or, from the NAT64 program, a node) arriving on
/// `ingress` with its IPv4 header at `OFF`: the source becomes the public address and a
/// claimed port. The caller sends it upstream.
#[inline(always)]
pub(crate) fn translate_out<C: net::Packet, const OFF: usize>(
    ctx: &C,
    cfg: &Nat4Config,
    pkt: &Packet,
    ingress: u32,
) -> Result<Nat4Verdict, Nat4Verdict> {
    let head = l4_head::<C, OFF>(ctx)?;
    // SAFETY: l4_head checked the 8 bytes are inside the packet.
    let (w0, w1, w2) = unsafe { ((*head).word0, (*head).word1, (*head).word2) };
    let (sport, dport, tcp) = match pkt.proto {
        net::IPPROTO_TCP => (w0, w1, tcp_flags::<C, OFF>(ctx, pkt)?),
        net::IPPROTO_UDP => (w0, w1, 0),
        net::IPPROTO_ICMP if w0.to_ne_bytes()[0] == net::ICMP_ECHO_REQUEST => (w2, 0, 0),
        _ => return Err(not_ours_or(pkt, Nat4Verdict::PassProtocol)),
    };
    let key = CtKey {
        proto: pkt.proto,
        dir: CT_OUT,
        pad: [0; 2],
        src: pkt.src,
        dst: pkt.dst,
        sport,
        dport,
    };
    // Checked before any state exists: a traceroute's TTL-1 probes must not take ports.
    if pkt.ttl <= 1 {
        return Err(not_ours_or(pkt, Nat4Verdict::PassTtl));
    }
    let up = &cfg.upstream;
    if up.flags & ROUTE_NEIGH_KNOWN == 0 {
        return Err(not_ours_or(pkt, Nat4Verdict::PassNoNeighbour));
    }
    let now = now();
    let (entry, verdict) = match lookup_live(cfg, &key, now) {
        Some(entry) => {
            // SAFETY: a pointer into the map's value, valid during this program run.
            if unsafe { (*entry).ifindex } != ingress {
                return Err(Nat4Verdict::PassSpoofed);
            }
            touch(entry, pkt.proto, tcp, now);
            // SAFETY: as above.
            (
                unsafe {
                    Xlat {
                        addr: (*entry).addr,
                        port: (*entry).port,
                    }
                },
                Nat4Verdict::Out,
            )
        }
        None => (
            new_outbound(cfg, pkt, &key, tcp, ingress, now)?,
            Nat4Verdict::NewOut,
        ),
    };
    rewrite::<C, OFF>(ctx, pkt, head, true, entry.addr, entry.port)?;
    Ok(verdict)
}

/// Packets that are not from a tenant network are not ours at all; a tenant's packet we
/// cannot translate is counted under `reason`.
#[inline(always)]
fn not_ours_or(pkt: &Packet, reason: Nat4Verdict) -> Nat4Verdict {
    if tenant_route(pkt.src).is_some() {
        reason
    } else {
        Nat4Verdict::PassNotNat
    }
}

/// The route of the /24 `addr` lies in.
#[inline(always)]
fn tenant_route(addr: [u8; 4]) -> Option<Route4> {
    let net = [addr[0], addr[1], addr[2], 0];
    // SAFETY: copied out at once.
    unsafe { ROUTES4.get(net) }.copied()
}

/// The first packet of a connection from a tenant: checks where it comes from and goes to,
/// then allocates a public port.
#[inline(always)]
fn new_outbound(
    cfg: &Nat4Config,
    pkt: &Packet,
    key: &CtKey,
    tcp: u8,
    ingress: u32,
    now: u64,
) -> Result<Xlat, Nat4Verdict> {
    let Some(from) = tenant_route(pkt.src) else {
        return Err(Nat4Verdict::PassNotNat);
    };
    if from.ifindex != ingress {
        return Err(Nat4Verdict::PassSpoofed);
    }
    if let Some(to) = tenant_route(pkt.dst) {
        if to.tenant != from.tenant {
            return Err(Nat4Verdict::DropIsolation);
        }
        return Err(Nat4Verdict::PassLocal);
    }
    // SAFETY: only presence matters.
    if unsafe { LOCAL4.get(pkt.dst) }.is_some() {
        return Err(Nat4Verdict::PassLocal);
    }
    // A TCP connection starts with a SYN; anything else without state is the kernel's
    // (an old connection the kernel's own NAT carries).
    if pkt.proto == net::IPPROTO_TCP && tcp & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return Err(Nat4Verdict::PassNoState);
    }
    allocate_port(cfg, key, ingress, now)
}

/// Finds a free public port for `key` (the source port if it is in range and free) and
/// creates both entries.
#[inline(always)]
fn allocate_port(
    cfg: &Nat4Config,
    key: &CtKey,
    ingress: u32,
    now: u64,
) -> Result<Xlat, Nat4Verdict> {
    let back = scratch_entry(key.src, key.sport, 0, now, 0)?;
    let port = claimed(claim_port(cfg, key, back, now)).ok_or(Nat4Verdict::DropExhausted)?;
    let entry = scratch_entry(cfg.public, port, 0, now, ingress)?;
    // Cannot fail for lack of room: an LRU map evicts instead.
    let _ = CT4.insert(key, entry, BPF_ANY as u64);
    Ok(Xlat {
        addr: cfg.public,
        port,
    })
}

/// What a packet is translated to: its new source (outgoing) or destination (incoming).
#[derive(Clone, Copy)]
pub(crate) struct Xlat {
    pub addr: [u8; 4],
    pub port: u16,
}

/// This CPU's slot for building an entry to insert: entries built on the stack cost frame
/// space the programs do not have (512 bytes for the whole call chain).
#[btf_map]
static ENTRY_SCRATCH: PerCpuArray<CtEntry, 1> = PerCpuArray::new();

/// Fills the scratch entry (NAT44: no IPv6 address).
#[inline(always)]
fn scratch_entry(
    addr: [u8; 4],
    port: u16,
    flags: u8,
    now: u64,
    ifindex: u32,
) -> Result<&'static CtEntry, Nat4Verdict> {
    let e = ENTRY_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Nat4Verdict::PassMalformed)?;
    // SAFETY: this CPU's slot, used by one program run at a time.
    let e = unsafe { &mut *e };
    e.addr = addr;
    e.port = port;
    e.state = 0;
    e.flags = flags;
    e.last_seen = now;
    e.ifindex = ifindex;
    e.pad = 0;
    e.addr6 = [0; 16];
    Ok(e)
}

/// Claims a public port for the outgoing connection `key` by inserting its incoming entry
/// `back` under the reply key (NAT44 and NAT64 share this, so they never collide). The
/// insert uses BPF_NOEXIST, so two CPUs can never hand out one port for the same remote
/// endpoint. Returns `CLAIMED | port` (network order), or 0 when every try was taken: one
/// register, so this can be a BPF function of its own (inlined, the callers' stack frames
/// would exceed 512 bytes).
#[inline(never)]
pub(crate) fn claim_port(cfg: &Nat4Config, key: &CtKey, back: &CtEntry, now: u64) -> u32 {
    let min = cfg.port_min as u32;
    let size = (cfg.port_max as u32).saturating_sub(min) + 1;
    let wanted = u16::from_be(key.sport) as u32;
    let start = if wanted >= min && wanted - min < size {
        wanted - min
    } else {
        // SAFETY: helper without preconditions.
        (unsafe { bpf_get_prandom_u32() }) % size
    };
    for i in 0..PORT_TRIES {
        let port = ((min + (start + i) % size) as u16).to_be();
        let fwd = PortFwdKey {
            proto: key.proto,
            pad: 0,
            port,
        };
        // SAFETY: only presence matters.
        if unsafe { PORT_FWD4.get(fwd) }.is_some() {
            continue;
        }
        let in_key = key.reply(cfg.public, port);
        if claim(cfg, &in_key, back, now) {
            return CLAIMED | port as u32;
        }
    }
    0
}

const CLAIMED: u32 = 1 << 16;

/// The port of a `claim_port` result.
#[inline(always)]
pub(crate) fn claimed(result: u32) -> Option<u16> {
    if result & CLAIMED != 0 {
        Some(result as u16)
    } else {
        None
    }
}

/// Inserts `entry` under `key` unless a live entry holds it; a stale one is reclaimed.
#[inline(always)]
fn claim(cfg: &Nat4Config, key: &CtKey, entry: &CtEntry, now: u64) -> bool {
    if CT4.insert(key, entry, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    lookup_live(cfg, key, now).is_none() && CT4.insert(key, entry, BPF_NOEXIST as u64).is_ok()
}

/// The other direction's key of the connection `key` → `entry`.
#[inline(always)]
fn partner_key(key: &CtKey, entry: &CtEntry) -> CtKey {
    if key.dir == CT_OUT {
        key.reply(entry.addr, entry.port)
    } else {
        CtKey {
            proto: key.proto,
            dir: CT_OUT,
            pad: [0; 2],
            src: entry.addr,
            dst: key.src,
            sport: entry.port,
            dport: key.sport,
        }
    }
}

/// The entry of `key` if the connection is alive: its own direction or the other one saw a
/// packet within the timeout. A dead connection's entries are deleted here (counted).
#[inline(always)]
fn lookup_live(cfg: &Nat4Config, key: &CtKey, now: u64) -> Option<*mut CtEntry> {
    let entry = CT4.get_ptr_mut(key)?;
    // SAFETY: pointer into the map value, valid during this run; read in place (copies
    // would cost stack the programs do not have).
    let e = unsafe { &*entry };
    if fresh(cfg, key.proto, e, now) {
        return Some(entry);
    }
    if e.flags & CT_NAT64 != 0 {
        if crate::nat64::partner_alive(cfg, key, e, now) {
            return Some(entry);
        }
        let _ = CT4.remove(key);
        count(&NAT4_STATS, Nat4Verdict::Expired as u32, 0);
        return None;
    }
    let other = partner_key(key, e);
    // SAFETY: as above.
    let partner = CT4.get_ptr(other).map(|p| unsafe { &*p });
    let ours = partner.filter(|p| p.addr == back_addr(key) && p.port == back_port(key));
    if let Some(p) = ours {
        if fresh(cfg, key.proto, p, now) {
            return Some(entry);
        }
        let _ = CT4.remove(other);
    }
    let _ = CT4.remove(key);
    count(&NAT4_STATS, Nat4Verdict::Expired as u32, 0);
    None
}

/// What the partner entry of `key` translates to: the address and port `key`'s packets
/// carried before translation on the other side.
#[inline(always)]
fn back_addr(key: &CtKey) -> [u8; 4] {
    if key.dir == CT_OUT {
        key.src
    } else {
        key.dst
    }
}

#[inline(always)]
fn back_port(key: &CtKey) -> u16 {
    if key.dir == CT_OUT {
        key.sport
    } else {
        key.dport
    }
}

#[inline(always)]
pub(crate) fn fresh(cfg: &Nat4Config, proto: u8, entry: &CtEntry, now: u64) -> bool {
    now.saturating_sub(entry.last_seen) <= cfg.timeout_ns(proto, entry.state)
}

/// Records a packet on a live entry: time, and the TCP state its flags move to.
#[inline(always)]
pub(crate) fn touch(entry: *mut CtEntry, proto: u8, tcp: u8, now: u64) {
    // SAFETY: pointer into the map value, valid during this run. Concurrent writers race
    // benignly: both write a current time or the same state.
    unsafe {
        (*entry).last_seen = now;
        if proto == net::IPPROTO_TCP {
            let state = (*entry).state;
            if tcp & (TCP_FIN | TCP_RST) != 0 {
                if state != TCP_CLOSING {
                    (*entry).state = TCP_CLOSING;
                }
            } else if tcp & (TCP_ACK | TCP_SYN) == TCP_ACK && state != TCP_ESTABLISHED {
                (*entry).state = TCP_ESTABLISHED;
            }
        }
    }
}

/// A packet to the public address: a reply, a port-forwarded connection or an ICMP error.
#[inline(always)]
fn inbound(
    ctx: &XdpContext,
    cfg: &Nat4Config,
    pkt: &Packet,
) -> Result<(Nat4Verdict, u32), Nat4Verdict> {
    let head = l4_head::<_, L3>(ctx)?;
    // SAFETY: l4_head checked the 8 bytes are inside the packet.
    let (w0, w1, w2) = unsafe { ((*head).word0, (*head).word1, (*head).word2) };
    let (sport, dport, tcp) = match pkt.proto {
        net::IPPROTO_TCP => (w0, w1, tcp_flags::<_, L3>(ctx, pkt)?),
        net::IPPROTO_UDP => (w0, w1, 0),
        net::IPPROTO_ICMP => match w0.to_ne_bytes()[0] {
            net::ICMP_ECHO_REPLY => (0, w2, 0),
            net::ICMP_DEST_UNREACH | net::ICMP_TIME_EXCEEDED | net::ICMP_PARAMETER_PROBLEM => {
                return icmp_error(ctx, cfg, pkt, head);
            }
            // Echo requests to the gateway and the rest: the kernel answers.
            _ => return Err(Nat4Verdict::PassProtocol),
        },
        _ => return Err(Nat4Verdict::PassProtocol),
    };
    let key = CtKey {
        proto: pkt.proto,
        dir: CT_IN,
        pad: [0; 2],
        src: pkt.src,
        dst: pkt.dst,
        sport,
        dport,
    };
    if pkt.ttl <= 1 {
        return Err(Nat4Verdict::PassTtl);
    }
    let now = now();
    let (entry, verdict) = match lookup_live(cfg, &key, now) {
        Some(entry) => {
            touch(entry, pkt.proto, tcp, now);
            // SAFETY: a pointer into the map's value, valid during this program run.
            let e = unsafe { &*entry };
            if e.flags & CT_NAT64 != 0 {
                let action = crate::nat64::to_nat64_in(ctx, &key, false, false);
                return Ok((Nat4Verdict::Nat64, action));
            }
            (
                Xlat {
                    addr: e.addr,
                    port: e.port,
                },
                Nat4Verdict::In,
            )
        }
        None => (new_forward(&key, tcp, now)?, Nat4Verdict::NewForward),
    };
    let route = tenant_route(entry.addr).ok_or(Nat4Verdict::PassNoState)?;
    if route.flags & ROUTE4_VIA_KERNEL != 0 {
        // Behind a link XDP cannot redirect to (a node's WireGuard tunnel): translated
        // here, routed by the kernel (which decrements the TTL once more).
        rewrite::<_, L3>(ctx, pkt, head, false, entry.addr, entry.port)?;
        return Ok((verdict, xdp_action::XDP_PASS));
    }
    if route.flags & ROUTE_NEIGH_KNOWN == 0 {
        return Err(Nat4Verdict::PassNoNeighbour);
    }
    rewrite::<_, L3>(ctx, pkt, head, false, entry.addr, entry.port)?;
    redirect(ctx, &route, verdict)
}

/// A new connection to a forwarded public port (TCP only on a SYN): both entries point at
/// the tenant's target.
#[inline(always)]
fn new_forward(key: &CtKey, tcp: u8, now: u64) -> Result<Xlat, Nat4Verdict> {
    if key.proto == net::IPPROTO_ICMP {
        return Err(Nat4Verdict::PassNoState);
    }
    let fwd = PortFwdKey {
        proto: key.proto,
        pad: 0,
        port: key.dport,
    };
    // SAFETY: copied out at once.
    let target = unsafe { PORT_FWD4.get(fwd) }
        .copied()
        .ok_or(Nat4Verdict::PassNoState)?;
    if key.proto == net::IPPROTO_TCP && tcp & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return Err(Nat4Verdict::PassNoState);
    }
    let route = tenant_route(target.addr).ok_or(Nat4Verdict::PassNoState)?;
    let entry = scratch_entry(target.addr, target.port, CT_PORT_FORWARD, now, 0)?;
    let _ = CT4.insert(key, entry, BPF_ANY as u64);
    let out_key = partner_key(key, entry);
    let out = scratch_entry(key.dst, key.dport, CT_PORT_FORWARD, now, route.ifindex)?;
    let _ = CT4.insert(out_key, out, BPF_ANY as u64);
    Ok(Xlat {
        addr: target.addr,
        port: target.port,
    })
}

/// Rewrites source (`out`) or destination address and port, updating the IPv4 and L4
/// checksums incrementally, and decrements the TTL.
#[inline(always)]
fn rewrite<C: net::Packet, const OFF: usize>(
    ctx: &C,
    pkt: &Packet,
    head: *mut L4Head,
    out: bool,
    addr: [u8; 4],
    port: u16,
) -> Result<(), Nat4Verdict> {
    let ip = pkt.ip;
    let old_addr = if out { pkt.src } else { pkt.dst };
    let ttl_word = |ttl: u8| u16::from_ne_bytes([ttl, pkt.proto]);
    let ip_delta = CsumDelta::new()
        .addr(old_addr, addr)
        .word(ttl_word(pkt.ttl), ttl_word(pkt.ttl - 1));
    // SAFETY: parse and l4_head checked both headers lie inside the packet.
    unsafe {
        (*ip).check = ip_delta.apply((*ip).check);
        (*ip).ttl = pkt.ttl - 1;
        if out {
            (*ip).src = addr;
        } else {
            (*ip).dst = addr;
        }
    }
    // SAFETY: as above.
    let old_port = unsafe {
        match (pkt.proto, out) {
            (net::IPPROTO_ICMP, _) => (*head).word2,
            (_, true) => (*head).word0,
            (_, false) => (*head).word1,
        }
    };
    let l4_delta = CsumDelta::new().addr(old_addr, addr).word(old_port, port);
    match pkt.proto {
        net::IPPROTO_TCP => {
            let check: *mut u16 =
                ptr_at(ctx, OFF + Ipv4Hdr::LEN + TCP_CSUM_OFF).ok_or(Nat4Verdict::PassMalformed)?;
            // SAFETY: ptr_at checked the field is inside the packet.
            unsafe { *check = l4_delta.apply(*check) };
        }
        // SAFETY: the UDP checksum is word3 of the checked head; 0 means "none".
        net::IPPROTO_UDP => unsafe {
            if (*head).word3 != 0 {
                (*head).word3 = udp_check(l4_delta.apply((*head).word3));
            }
        },
        // SAFETY: the ICMP checksum is word1 and covers no pseudo-header.
        _ => unsafe {
            (*head).word1 = CsumDelta::new().word(old_port, port).apply((*head).word1);
        },
    }
    // SAFETY: as above.
    unsafe {
        match (pkt.proto, out) {
            (net::IPPROTO_ICMP, _) => (*head).word2 = port,
            (_, true) => (*head).word0 = port,
            (_, false) => (*head).word1 = port,
        }
    }
    Ok(())
}

/// A computed UDP checksum of 0 is sent as all ones (0 means "no checksum").
#[inline(always)]
pub(crate) fn udp_check(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

/// Offsets inside an ICMP error: the embedded IPv4 header and its first 8 L4 bytes.
pub(crate) const INNER_L3: usize = L4 + 8;
pub(crate) const INNER_L4: usize = INNER_L3 + Ipv4Hdr::LEN;

/// An ICMP error about a packet we translated (it quotes that packet as sent: from the
/// public address). Translates the outer destination and the quoted source, fixing the
/// quoted IPv4 and L4 checksums and the ICMP checksum over all of it, so traceroute and
/// path-MTU discovery work through the NAT.
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    cfg: &Nat4Config,
    pkt: &Packet,
    head: *mut L4Head,
) -> Result<(Nat4Verdict, u32), Nat4Verdict> {
    // The quote must lie inside the IPv4 packet, not in padding after it: the ICMP
    // checksum covers only the packet.
    // SAFETY: checked by parse.
    let tot_len = u16::from_be_bytes(unsafe { (*pkt.ip).tot_len }) as usize;
    if L3 + tot_len < INNER_L4 + 8 {
        return Err(Nat4Verdict::PassMalformed);
    }
    let quotes_tcp_check = L3 + tot_len >= INNER_L4 + TCP_CSUM_OFF + 2;
    let inner: *mut Ipv4Hdr = ptr_at(ctx, INNER_L3).ok_or(Nat4Verdict::PassMalformed)?;
    let inner_l4: *mut L4Head = ptr_at(ctx, INNER_L4).ok_or(Nat4Verdict::PassMalformed)?;
    // SAFETY: both checked by ptr_at.
    let (vihl, proto, src, dst, w0, w1, w2) = unsafe {
        (
            (*inner).version_ihl,
            (*inner).protocol,
            (*inner).src,
            (*inner).dst,
            (*inner_l4).word0,
            (*inner_l4).word1,
            (*inner_l4).word2,
        )
    };
    if vihl != 0x45 || src != cfg.public {
        return Err(Nat4Verdict::PassMalformed);
    }
    let (sport, dport) = match proto {
        net::IPPROTO_TCP | net::IPPROTO_UDP => (w1, w0),
        net::IPPROTO_ICMP if w0.to_ne_bytes()[0] == net::ICMP_ECHO_REQUEST => (0, w2),
        _ => return Err(Nat4Verdict::PassProtocol),
    };
    // The connection's incoming key: as a reply to the quoted packet would carry it.
    let key = CtKey {
        proto,
        dir: CT_IN,
        pad: [0; 2],
        src: dst,
        dst: src,
        sport,
        dport,
    };
    let entry = lookup_live(cfg, &key, now()).ok_or(Nat4Verdict::PassNoState)?;
    // SAFETY: pointer into the map value, valid during this run.
    let entry = unsafe { &*entry };
    if pkt.ttl <= 1 {
        return Err(Nat4Verdict::PassTtl);
    }
    if entry.flags & CT_NAT64 != 0 {
        let action = crate::nat64::to_nat64_in(ctx, &key, true, quotes_tcp_check);
        return Ok((Nat4Verdict::Nat64, action));
    }
    let route = tenant_route(entry.addr).ok_or(Nat4Verdict::PassNoState)?;
    if route.flags & ROUTE_NEIGH_KNOWN == 0 {
        return Err(Nat4Verdict::PassNoNeighbour);
    }
    let icmp_delta = rewrite_quoted(ctx, inner, inner_l4, proto, entry, quotes_tcp_check)?;
    // SAFETY: the outer ICMP header is the checked head.
    unsafe { (*head).word1 = icmp_delta.apply((*head).word1) };
    // The outer header: destination and TTL, as for any incoming packet (the ICMP header
    // has no ports, so only the IPv4 part of `rewrite` applies).
    let ip = pkt.ip;
    let ttl_word = |ttl: u8| u16::from_ne_bytes([ttl, pkt.proto]);
    let ip_delta = CsumDelta::new()
        .addr(pkt.dst, entry.addr)
        .word(ttl_word(pkt.ttl), ttl_word(pkt.ttl - 1));
    // SAFETY: checked by parse.
    unsafe {
        (*ip).check = ip_delta.apply((*ip).check);
        (*ip).ttl = pkt.ttl - 1;
        (*ip).dst = entry.addr;
    }
    redirect(ctx, &route, Nat4Verdict::IcmpError)
}

/// Translates the quoted packet's source back to the tenant; returns the change to the
/// outer ICMP checksum (which covers every quoted byte).
#[inline(always)]
fn rewrite_quoted(
    ctx: &XdpContext,
    inner: *mut Ipv4Hdr,
    inner_l4: *mut L4Head,
    proto: u8,
    entry: &CtEntry,
    quotes_tcp_check: bool,
) -> Result<CsumDelta, Nat4Verdict> {
    // SAFETY: both pointers were checked by ptr_at in the caller.
    unsafe {
        let old_src = (*inner).src;
        let old_ip_check = (*inner).check;
        let new_ip_check = CsumDelta::new()
            .addr(old_src, entry.addr)
            .apply(old_ip_check);
        (*inner).src = entry.addr;
        (*inner).check = new_ip_check;
        let mut delta = CsumDelta::new()
            .addr(old_src, entry.addr)
            .word(old_ip_check, new_ip_check);
        let old_port = if proto == net::IPPROTO_ICMP {
            (*inner_l4).word2
        } else {
            (*inner_l4).word0
        };
        delta = delta.word(old_port, entry.port);
        let l4_delta = CsumDelta::new()
            .addr(old_src, entry.addr)
            .word(old_port, entry.port);
        match proto {
            net::IPPROTO_TCP => {
                // The quoted TCP checksum is only there when the router quoted enough.
                let check =
                    ptr_at::<u16, _>(ctx, INNER_L4 + TCP_CSUM_OFF).filter(|_| quotes_tcp_check);
                if let Some(check) = check {
                    let new = l4_delta.apply(*check);
                    delta = delta.word(*check, new);
                    *check = new;
                }
                (*inner_l4).word0 = entry.port;
            }
            net::IPPROTO_UDP => {
                let old = (*inner_l4).word3;
                if old != 0 {
                    let new = udp_check(l4_delta.apply(old));
                    delta = delta.word(old, new);
                    (*inner_l4).word3 = new;
                }
                (*inner_l4).word0 = entry.port;
            }
            _ => {
                let old = (*inner_l4).word1;
                let new = CsumDelta::new().word(old_port, entry.port).apply(old);
                delta = delta.word(old, new);
                (*inner_l4).word1 = new;
                (*inner_l4).word2 = entry.port;
            }
        }
        Ok(delta)
    }
}

/// Writes the route's Ethernet addresses and redirects the frame to its egress link.
#[inline(always)]
fn redirect(
    ctx: &XdpContext,
    route: &Route4,
    verdict: Nat4Verdict,
) -> Result<(Nat4Verdict, u32), Nat4Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Nat4Verdict::PassMalformed)?;
    // SAFETY: ptr_at checked the header.
    unsafe {
        (*eth).dst = route.dst_mac;
        (*eth).src = route.src_mac;
    }
    match TX_PORTS.redirect(route.ifindex, 0) {
        Ok(action) => Ok((verdict, action)),
        // Already rewritten: the kernel could not use the frame any more.
        Err(_) => Ok((Nat4Verdict::DropRedirect, xdp_action::XDP_DROP)),
    }
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
