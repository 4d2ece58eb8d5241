//! Human-readable views of a plan: the table of `exitd plan`, the operator's upstream
//! routes, and the line-by-line facts that `exitd plan diff` compares.

use super::model::*;
use std::{collections::BTreeSet, fmt::Write};

/// One line per route on the upstream router, in `ip -6 route` syntax.
pub fn upstream_routes(plan: &Plan, router_port: &str) -> String {
    let mut out = String::new();
    for r in &plan.upstream.routes {
        let _ = writeln!(
            out,
            "{} via {} dev {router_port}  # exit node {} (or via {})",
            r.dest, r.via, r.exit_node, r.via_global
        );
    }
    out
}

/// The upstream router's own addresses on PrefixZero.
pub fn upstream_addresses(plan: &Plan) -> Vec<String> {
    plan.upstream
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect()
}

/// `ip route` syntax for one planned route.
pub fn route_line(route: &RoutePlan) -> String {
    let dest = match route.dest.prefix_len() {
        0 => "default".to_string(),
        _ => route.dest.to_string(),
    };
    let mut line = dest;
    if let Some(via) = route.via {
        let _ = write!(line, " via {via}");
    }
    let _ = write!(line, " dev {}", route.dev);
    if route.onlink {
        line.push_str(" onlink");
    }
    line
}

fn kind_text(kind: &LinkKind) -> String {
    match kind {
        LinkKind::Uplink { source: Some(s) } => format!("uplink (from {s})"),
        LinkKind::Uplink { source: None } => "uplink".to_string(),
        LinkKind::Veth {
            peer,
            peer_namespace,
        }
        | LinkKind::VethPeer {
            peer,
            peer_namespace,
        } => format!("veth <-> {peer}@{peer_namespace}"),
        LinkKind::Wireguard => "wireguard".to_string(),
    }
}

fn namespace_table(out: &mut String, title: &str, ns: &NamespacePlan) {
    let _ = writeln!(out, "{title} (namespace {})", ns.name);
    let _ = writeln!(out, "  {:<15} {:<36} ADDRESSES", "LINK", "KIND");
    for link in &ns.links {
        let addrs: Vec<String> = link.addresses.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            out,
            "  {:<15} {:<36} {}",
            link.name,
            kind_text(&link.kind),
            addrs.join(" ")
        );
    }
    let _ = writeln!(out, "  routes:");
    for route in &ns.routes {
        let _ = writeln!(out, "    {}", route_line(route));
    }
}

/// The readable table `exitd plan` prints.
pub fn table(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "allocation {}  exit node {} ({})  allocation nr {}\n",
        plan.allocation, plan.exit_node, plan.exit_node_net, plan.alloc_nr
    );
    let _ = writeln!(
        out,
        "UPSTREAM ROUTER (addresses {})",
        upstream_addresses(plan).join(" ")
    );
    out.push_str(&indent(&upstream_routes(plan, "<port>")));
    out.push('\n');
    namespace_table(&mut out, "GATEWAY", &plan.gateway);
    for ep in &plan.exitpoints {
        out.push('\n');
        let title = format!(
            "EXITPOINT {} of tenant {:?} on {}",
            ep.prefix, ep.tenant, ep.node
        );
        namespace_table(&mut out, &title, &ep.namespace);
        wireguard_table(&mut out, &ep.wireguard);
    }
    nat_table(&mut out, &plan.dataplane.nat);
    for warning in &plan.warnings {
        let _ = writeln!(out, "\nWARNING: {warning}");
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn wireguard_table(out: &mut String, wg: &WireguardPlan) {
    let _ = writeln!(
        out,
        "  wireguard {} listen-port {} key {}",
        wg.link,
        wg.listen_port,
        wg.private_key_file.display()
    );
    for peer in &wg.peers {
        let _ = writeln!(out, "    {}", peer_line(peer));
    }
}

fn peer_line(peer: &PeerPlan) -> String {
    let allowed: Vec<String> = peer.allowed_ips.iter().map(|a| a.to_string()).collect();
    let endpoint = peer
        .endpoint
        .map(|e| format!(" endpoint {e}"))
        .unwrap_or_default();
    format!(
        "peer {} ({} on {}){endpoint} allowed-ips {}",
        peer.public_key,
        peer.prefix,
        peer.node,
        allowed.join(",")
    )
}

fn nat_table(out: &mut String, nat: &NatPlan) {
    let Some(public) = nat.public_ipv4 else {
        let _ = writeln!(out, "\nIPv4 NAT: none (no gateway_ipv4)");
        return;
    };
    let _ = writeln!(out, "\nIPv4 NAT on {} to {public}", nat.out_link);
    for line in nat_lines(nat) {
        let _ = writeln!(out, "  {line}");
    }
}

fn nat_lines(nat: &NatPlan) -> Vec<String> {
    let snat = nat.snat.iter().map(|s| {
        format!(
            "snat {} -> {} out {} (tenant {:?})",
            s.source, s.to, nat.out_link, s.tenant
        )
    });
    let forwards = nat.port_forwards.iter().map(|f| {
        format!(
            "forward {} {} -> {} (tenant {:?})",
            f.protocol, f.public, f.target, f.tenant
        )
    });
    snat.chain(forwards).collect()
}

/// Every fact of a plan as one self-contained line; diffing two plans is comparing sets.
pub fn facts(plan: &Plan) -> BTreeSet<String> {
    let mut facts = BTreeSet::new();
    for r in &plan.upstream.routes {
        facts.insert(format!("upstream: route {} via {}", r.dest, r.via));
    }
    for ns in plan.namespaces() {
        facts.insert(format!("namespace {}", ns.name));
        for link in &ns.links {
            facts.insert(format!(
                "{}: link {} {}",
                ns.name,
                link.name,
                kind_text(&link.kind)
            ));
            for addr in &link.addresses {
                facts.insert(format!("{}: address {addr} dev {}", ns.name, link.name));
            }
        }
        for route in &ns.routes {
            facts.insert(format!("{}: route {}", ns.name, route_line(route)));
        }
    }
    for ep in &plan.exitpoints {
        let wg = &ep.wireguard;
        let ns = &ep.namespace.name;
        facts.insert(format!(
            "{ns}: wireguard {} listen-port {}",
            wg.link, wg.listen_port
        ));
        for peer in &wg.peers {
            facts.insert(format!("{ns}: wireguard {} {}", wg.link, peer_line(peer)));
        }
    }
    for line in nat_lines(&plan.dataplane.nat) {
        facts.insert(format!("nat: {line}"));
    }
    facts
}

/// What going from `old` to `new` adds and removes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlanDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub fn diff(old: &Plan, new: &Plan) -> PlanDiff {
    let (old, new) = (facts(old), facts(new));
    PlanDiff {
        added: new.difference(&old).cloned().collect(),
        removed: old.difference(&new).cloned().collect(),
    }
}

impl PlanDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// `- removed` lines first, then `+ added` lines.
    pub fn text(&self) -> String {
        let removed = self.removed.iter().map(|l| format!("- {l}\n"));
        let added = self.added.iter().map(|l| format!("+ {l}\n"));
        removed.chain(added).collect()
    }
}
