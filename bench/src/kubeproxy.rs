//! kube-proxy-style rules: iptables-restore input and nft transactions shaped as kube-proxy writes
//! them, and readers for the DNAT counters that prove traffic took that path.
//!
//! The shapes follow kube-proxy's iptables mode (1.28-1.31, full sync, default flags:
//! `--masquerade-bit=14`, `--cluster-cidr` set, all node addresses accept NodePorts,
//! `--iptables-localhost-nodeports=true`) and nftables mode (1.31 onwards: `cluster-ips` set,
//! `service-endpoints-check` and `cluster-ips-check` chains), for ClusterIP Services with
//! `Cluster` traffic policy and no session affinity: the only kind the benchmark builds.
//!
//! Chain names are derived exactly as kube-proxy derives them: the RFC 4648 base32 (standard
//! alphabet) of the SHA-256 of the same input string, truncated (16 characters for `KUBE-SVC-` and
//! `KUBE-SEP-`, 8 for the nft chain prefix). SHA-256 is written out below (FIPS 180-4) because the
//! crate takes no hashing dependency; using the real algorithm, rather than a cheaper hash, makes
//! every chain name identical to the one a real kube-proxy would create for the same Service, so
//! rule dumps from the benchmark can be compared with dumps from a cluster.
//!
//! Deliberate differences from kube-proxy, all documented where they happen:
//! - nft endpoint chains carry a `counter` on their `dnat` rule (kube-proxy has none), so the
//!   benchmark can show that connections were translated by these rules.
//! - iptables: rule order follows `ServiceSet::services` (kube-proxy walks a Go map, so its order
//!   is arbitrary).
//! - nft endpoint changes delete the endpoint chains that are gone in the same transaction
//!   (kube-proxy flushes them and deletes them in a later transaction, at least a second later,
//!   because kernels before 6.2 kept an unreferenced chain busy for a while).

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::model::{Service, ServicePort, ServiceSet};

/// Appends one line to a `String` (writing to a `String` cannot fail).
macro_rules! emit {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// kube-proxy's default `--masquerade-bit` (14).
const MASQ_MARK: &str = "0x4000";

/// Above this many endpoints in total kube-proxy's iptables mode stops writing the per-endpoint
/// comments, to keep the restore input small ("large cluster mode").
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// nft names may be 256 bytes; kube-proxy keeps 16 for its chain prefixes.
const NFT_CHAIN_BASE_MAX: usize = 256 - 16;

/// `ns/name:port`, kube-proxy's `ServicePortName` string (`ns/name` for an unnamed port).
fn service_port_name(svc: &Service, port: &ServicePort) -> String {
    if port.name.is_empty() {
        format!("{}/{}", svc.namespace, svc.name)
    } else {
        format!("{}/{}:{}", svc.namespace, svc.name, port.name)
    }
}

/// The first `chars` characters of the base32 (RFC 4648 standard alphabet) encoding of `bytes`.
fn base32_prefix(bytes: &[u8], chars: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(chars);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &byte in bytes {
        acc = ((acc << 8) | u32::from(byte)) & 0xffff;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
            if out.len() == chars {
                return out;
            }
        }
    }
    out
}

fn hash16(input: &str) -> String {
    base32_prefix(&sha256(input.as_bytes()), 16)
}

/// `KUBE-SVC-<16>` chain of a service port: base32 of SHA-256 of `ns/name:port` + `tcp`, the
/// name kube-proxy gives it (e.g. `KUBE-SVC-XPGD46QRK7WJZT7O` for `ns1/svc1:p80` over TCP).
pub fn iptables_svc_chain(svc: &Service, port: &ServicePort) -> String {
    let input = format!("{}{}", service_port_name(svc, port), port.protocol.name());
    format!("KUBE-SVC-{}", hash16(&input))
}

/// `KUBE-SEP-<16>` chain of one endpoint of a service port: the same hash over
/// `ns/name:port` + `tcp` + `IP:PORT`.
pub fn iptables_sep_chain(svc: &Service, port: &ServicePort, endpoint: SocketAddrV4) -> String {
    let input = format!(
        "{}{}{}",
        service_port_name(svc, port),
        port.protocol.name(),
        endpoint
    );
    format!("KUBE-SEP-{}", hash16(&input))
}

/// `HASH8-name`, cut to what fits in an nft chain name after the prefix.
fn nft_hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{}", base32_prefix(&sha256(name.as_bytes()), 8), name);
    if out.len() > NFT_CHAIN_BASE_MAX {
        let mut cut = NFT_CHAIN_BASE_MAX - 3;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// `service-HASH8-ns/name/tcp/port`. nft 1.0.6 takes `/` in an unquoted chain name and rejects a
/// quoted one ("unexpected quoted string"), so names are written bare, as kube-proxy does.
fn nft_service_chain(svc: &Service, port: &ServicePort) -> String {
    let base = format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        port.protocol.name(),
        port.name
    );
    format!("service-{}", nft_hash_and_truncate(&base))
}

/// `endpoint-HASH8-ns/name/tcp/port__IP/PORT`.
fn nft_endpoint_chain(svc: &Service, port: &ServicePort, endpoint: SocketAddrV4) -> String {
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        svc.namespace,
        svc.name,
        port.protocol.name(),
        port.name,
        endpoint.ip(),
        endpoint.port()
    );
    format!("endpoint-{}", nft_hash_and_truncate(&base))
}

fn cidr_string((addr, len): (Ipv4Addr, u8)) -> String {
    format!("{addr}/{len}")
}

/// `%0.10f` of 1/n, as kube-proxy formats `--probability`.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

// ---------------------------------------------------------------------------------------------
// iptables
// ---------------------------------------------------------------------------------------------

/// The per-service-port chains a set produces, in the order they are written.
fn iptables_service_chains(set: &ServiceSet) -> Vec<String> {
    let mut chains = Vec::new();
    for svc in &set.services {
        for port in &svc.ports {
            if port.endpoints.is_empty() {
                continue;
            }
            chains.push(iptables_svc_chain(svc, port));
            for &ep in &port.endpoints {
                chains.push(iptables_sep_chain(svc, port, ep));
            }
        }
    }
    chains
}

/// The restore input of a full sync. Load it with `iptables-restore --noflush --counters`.
///
/// Like kube-proxy, the input does not touch the built-in chains: the jumps into the `KUBE-*`
/// chains come from [`iptables_jump_rules`], applied once after the first restore (which is what
/// creates the chains they name). Every restore declares its chains, which flushes them under
/// `--noflush`, and writes the rules without counters, so all counters restart from zero: read
/// them ([`iptables_dnat_packets`]) before the next restore.
///
/// kube-proxy finds stale chains by running `iptables-save -t nat` before the restore (in large
/// clusters at most once per sync period); here the caller names the previous set instead, and
/// the chains it had that `set` lacks are flushed and deleted (`-X`) in the same restore.
///
/// This is the full sync (kube-proxy's first sync, and any sync that must redo everything).
/// Since 1.27 kube-proxy handles an endpoint change with a partial sync by default
/// (`MinimizeIPTablesRestore`): it still rewrites all of KUBE-SERVICES, but declares and writes
/// only the chains of the Services that changed, which is far cheaper at scale.
pub fn iptables_restore_input(set: &ServiceSet, previous: Option<&ServiceSet>) -> String {
    let cidr = cidr_string(set.cluster_cidr);
    let total_endpoints: usize = set
        .services
        .iter()
        .flat_map(|svc| &svc.ports)
        .map(|port| port.endpoints.len())
        .sum();
    let large_cluster = total_endpoints > LARGE_CLUSTER_ENDPOINTS;

    let mut filter_chains = String::new();
    let mut filter_rules = String::new();
    let mut nat_chains = String::with_capacity(total_endpoints * 40 + 256);
    let mut nat_rules = String::with_capacity(total_endpoints * 400 + 1024);

    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        emit!(filter_chains, ":{chain} - [0:0]");
    }
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        emit!(nat_chains, ":{chain} - [0:0]");
    }

    emit!(
        nat_rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    emit!(
        nat_rules,
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    );
    emit!(
        nat_rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    emit!(nat_rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");

    // With localhost NodePorts allowed (the default) kube-proxy also writes kubelet's
    // anti-martian chain. It hangs off INPUT and OUTPUT only, so forwarded traffic never sees it.
    emit!(filter_chains, ":KUBE-FIREWALL - [0:0]");
    emit!(
        filter_rules,
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    );

    let mut active: HashSet<String> = HashSet::new();
    for svc in &set.services {
        for port in &svc.ports {
            let spn = service_port_name(svc, port);
            let proto = port.protocol.name();
            let vip = svc.vip;
            let dport = port.port;
            if port.endpoints.is_empty() {
                emit!(
                    filter_rules,
                    "-A KUBE-SERVICES -m comment --comment \"{spn} has no endpoints\" -m {proto} -p {proto} -d {vip}/32 --dport {dport} -j REJECT"
                );
                continue;
            }
            let svc_chain = iptables_svc_chain(svc, port);
            emit!(
                nat_rules,
                "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {vip}/32 --dport {dport} -j {svc_chain}"
            );
            emit!(nat_chains, ":{svc_chain} - [0:0]");
            emit!(
                nat_rules,
                "-A {svc_chain} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {vip}/32 --dport {dport} ! -s {cidr} -j KUBE-MARK-MASQ"
            );
            let n = port.endpoints.len();
            let sep_chains: Vec<String> = port
                .endpoints
                .iter()
                .map(|&ep| iptables_sep_chain(svc, port, ep))
                .collect();
            for (i, (ep, sep)) in port.endpoints.iter().zip(&sep_chains).enumerate() {
                let mut rule = format!("-A {svc_chain}");
                if !large_cluster {
                    let _ = write!(rule, " -m comment --comment \"{spn} -> {ep}\"");
                }
                if i + 1 < n {
                    let _ = write!(
                        rule,
                        " -m statistic --mode random --probability {}",
                        probability(n - i)
                    );
                }
                emit!(nat_rules, "{rule} -j {sep}");
            }
            for (ep, sep) in port.endpoints.iter().zip(&sep_chains) {
                emit!(nat_chains, ":{sep} - [0:0]");
                let comment = if large_cluster {
                    String::new()
                } else {
                    format!(" -m comment --comment {spn}")
                };
                emit!(
                    nat_rules,
                    "-A {sep}{comment} -s {}/32 -j KUBE-MARK-MASQ",
                    ep.ip()
                );
                emit!(
                    nat_rules,
                    "-A {sep}{comment} -m {proto} -p {proto} -j DNAT --to-destination {ep}"
                );
            }
            active.insert(svc_chain);
            active.extend(sep_chains);
        }
    }

    if let Some(previous) = previous {
        let mut deleted: HashSet<String> = HashSet::new();
        for chain in iptables_service_chains(previous) {
            if active.contains(&chain) || !deleted.insert(chain.clone()) {
                continue;
            }
            // Declaring the chain flushes it, which -X needs.
            emit!(nat_chains, ":{chain} - [0:0]");
            emit!(nat_rules, "-X {chain}");
        }
    }

    emit!(
        nat_rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );

    emit!(
        filter_rules,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    );
    emit!(
        filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    emit!(
        filter_rules,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );

    let mut out = String::with_capacity(
        filter_chains.len() + filter_rules.len() + nat_chains.len() + nat_rules.len() + 64,
    );
    out.push_str("*filter\n");
    out.push_str(&filter_chains);
    out.push_str(&filter_rules);
    out.push_str("COMMIT\n*nat\n");
    out.push_str(&nat_chains);
    out.push_str(&nat_rules);
    out.push_str("COMMIT\n");
    out
}

/// The jumps from the built-in chains into kube-proxy's chains, as `(table, arguments after
/// iptables -t <table>)`. Apply them in the order given, once, AFTER the first
/// [`iptables_restore_input`] has created the chains they name; the restore input never touches
/// the built-in chains, so later restores keep them.
///
/// kube-proxy prepends each rule (`-I <chain>`, i.e. at position 1) after checking it is not
/// there yet, so applying this list in order yields kube-proxy's final order, e.g. in FORWARD:
/// KUBE-PROXY-FIREWALL, KUBE-FORWARD, KUBE-SERVICES, KUBE-EXTERNAL-SERVICES. The last two entries
/// are the jumps to kubelet's KUBE-FIREWALL chain, which kube-proxy also ensures.
pub fn iptables_jump_rules() -> Vec<(&'static str, Vec<String>)> {
    const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];
    // (table, built-in chain, target, comment, extra matches)
    let jumps: [(&'static str, &str, &str, &str, &[&str]); 14] = [
        (
            "filter",
            "INPUT",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            NEW,
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            NEW,
        ),
        (
            "filter",
            "INPUT",
            "KUBE-NODEPORTS",
            "kubernetes health check service ports",
            &[],
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-SERVICES",
            "kubernetes service portals",
            NEW,
        ),
        (
            "filter",
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            NEW,
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-FORWARD",
            "kubernetes forwarding rules",
            &[],
        ),
        (
            "filter",
            "INPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            NEW,
        ),
        (
            "filter",
            "OUTPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            NEW,
        ),
        (
            "filter",
            "FORWARD",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            NEW,
        ),
        (
            "nat",
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &[],
        ),
        (
            "nat",
            "PREROUTING",
            "KUBE-SERVICES",
            "kubernetes service portals",
            &[],
        ),
        (
            "nat",
            "POSTROUTING",
            "KUBE-POSTROUTING",
            "kubernetes postrouting rules",
            &[],
        ),
        ("filter", "INPUT", "KUBE-FIREWALL", "", &[]),
        ("filter", "OUTPUT", "KUBE-FIREWALL", "", &[]),
    ];
    jumps
        .iter()
        .map(|&(table, chain, target, comment, extra)| {
            let mut args: Vec<String> = vec!["-I".into(), chain.into()];
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            if !comment.is_empty() {
                args.extend(["-m", "comment", "--comment", comment].map(String::from));
            }
            args.extend(["-j".to_owned(), target.to_owned()]);
            (table, args)
        })
        .collect()
}

/// Sum of the packet counters of the DNAT rules in this service port's `KUBE-SEP-*` chains, read
/// from `iptables-save -c -t nat` (lines like `[3:180] -A KUBE-SEP-... -j DNAT ...`). The nat
/// table sees only the first packet of a connection, so this counts connections.
pub fn iptables_dnat_packets(save: &str, svc: &Service, port: &ServicePort) -> u64 {
    let chains: HashSet<String> = port
        .endpoints
        .iter()
        .map(|&ep| iptables_sep_chain(svc, port, ep))
        .collect();
    let mut total = 0u64;
    for line in save.lines() {
        let Some(rest) = line.trim_start().strip_prefix('[') else {
            continue;
        };
        let Some((counters, rule)) = rest.split_once(']') else {
            continue;
        };
        let mut words = rule.split_whitespace();
        if words.next() != Some("-A") {
            continue;
        }
        let Some(chain) = words.next() else {
            continue;
        };
        if !chains.contains(chain) || !rule.contains("-j DNAT") {
            continue;
        }
        if let Some(packets) = counters
            .split_once(':')
            .and_then(|(packets, _)| packets.trim().parse::<u64>().ok())
        {
            total += packets;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// nftables
// ---------------------------------------------------------------------------------------------

/// Name of the nft table (`kube-proxy`, family ip).
pub const NFT_TABLE: &str = "kube-proxy";

/// `ip kube-proxy`, the family and table every command names.
const T: &str = "ip kube-proxy";

/// kube-proxy's base chains: (name, type, hook, priority). knftables writes the priorities as
/// numbers (dstnat = -100, srcnat = 100) because older nft rejects some named ones.
const NFT_BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// Regular chains jumped to from base chains: (target, base chain, extra match).
const NFT_JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new ",
    ),
];

/// `add chain` + `flush chain`: kube-proxy's way to get an existing-or-new, empty chain.
fn nft_ensure_chain(out: &mut String, chain: &str, created: &mut HashSet<String>) {
    if created.insert(chain.to_owned()) {
        emit!(out, "add chain {T} {chain}");
        emit!(out, "flush chain {T} {chain}");
    }
}

/// `VIP . tcp . PORT`, the key of the service maps.
fn nft_service_key(svc: &Service, port: &ServicePort) -> String {
    format!("{} . {} . {}", svc.vip, port.protocol.name(), port.port)
}

/// The rules of a service port chain and of its endpoint chains (the chains must exist and be
/// empty).
fn nft_port_rules(out: &mut String, svc: &Service, port: &ServicePort, cidr: &str) {
    let svc_chain = nft_service_chain(svc, port);
    let proto = port.protocol.name();
    emit!(
        out,
        "add rule {T} {svc_chain} ip daddr {} {proto} dport {} ip saddr != {cidr} jump mark-for-masquerade",
        svc.vip,
        port.port
    );
    let chains: Vec<String> = port
        .endpoints
        .iter()
        .map(|&ep| nft_endpoint_chain(svc, port, ep))
        .collect();
    let vmap: Vec<String> = chains
        .iter()
        .enumerate()
        .map(|(i, chain)| format!("{i} : goto {chain}"))
        .collect();
    emit!(
        out,
        "add rule {T} {svc_chain} numgen random mod {} vmap {{ {} }}",
        chains.len(),
        vmap.join(" , ")
    );
    for (ep, chain) in port.endpoints.iter().zip(&chains) {
        emit!(
            out,
            "add rule {T} {chain} ip saddr {} jump mark-for-masquerade",
            ep.ip()
        );
        // Not in kube-proxy: a counter, so the benchmark can show connections were DNATed here.
        // The nat hook sees only the first packet of a connection, so it counts connections.
        emit!(
            out,
            "add rule {T} {chain} meta l4proto {proto} counter dnat to {ep}"
        );
    }
}

/// Everything one service port adds in a sync that writes it (a full sync, or a partial sync of
/// a port that is new or had no endpoints before).
fn nft_port_add(
    out: &mut String,
    svc: &Service,
    port: &ServicePort,
    cidr: &str,
    created: &mut HashSet<String>,
) {
    let key = nft_service_key(svc, port);
    if port.endpoints.is_empty() {
        emit!(
            out,
            "add element {T} no-endpoint-services {{ {key} comment \"{}\" : goto reject-chain }}",
            service_port_name(svc, port)
        );
        return;
    }
    for &ep in &port.endpoints {
        nft_ensure_chain(out, &nft_endpoint_chain(svc, port, ep), created);
    }
    let svc_chain = nft_service_chain(svc, port);
    nft_ensure_chain(out, &svc_chain, created);
    emit!(
        out,
        "add element {T} service-ips {{ {key} : goto {svc_chain} }}"
    );
    nft_port_rules(out, svc, port, cidr);
}

/// The whole `table ip kube-proxy` as kube-proxy's first full sync writes it, as one `nft -f`
/// transaction. It also works on a table that already exists (everything is flushed and
/// rewritten), but then chains of Services that are no longer in `set` stay behind; use
/// [`nft_delete`] first for a clean start.
pub fn nft_full(set: &ServiceSet) -> String {
    let cidr = cidr_string(set.cluster_cidr);
    let endpoints: usize = set
        .services
        .iter()
        .flat_map(|svc| &svc.ports)
        .map(|port| port.endpoints.len() + 1)
        .sum();
    let mut out = String::with_capacity(endpoints * 450 + 8192);
    let mut created: HashSet<String> = HashSet::new();

    emit!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    // On its first sync kube-proxy adds and deletes every base chain once, so a leftover base
    // chain with other properties cannot make the transaction fail.
    for (name, ..) in NFT_BASE_CHAINS {
        emit!(out, "add chain {T} {name}");
        emit!(out, "delete chain {T} {name}");
    }
    for (name, kind, hook, priority) in NFT_BASE_CHAINS {
        emit!(
            out,
            "add chain {T} {name} {{ type {kind} hook {hook} priority {priority} ; }}"
        );
        emit!(out, "flush chain {T} {name}");
    }
    for (target, base, extra) in NFT_JUMPS {
        nft_ensure_chain(&mut out, target, &mut created);
        emit!(out, "add rule {T} {base} {extra}jump {target}");
    }
    for chain in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        nft_ensure_chain(&mut out, chain, &mut created);
    }
    emit!(
        out,
        "add rule {T} mark-for-masquerade mark set mark or {MASQ_MARK}"
    );
    emit!(
        out,
        "add rule {T} masquerading mark and {MASQ_MARK} == 0 return"
    );
    emit!(
        out,
        "add rule {T} masquerading mark set mark xor {MASQ_MARK}"
    );
    emit!(out, "add rule {T} masquerading masquerade fully-random");

    emit!(
        out,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    emit!(
        out,
        "add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    // All node addresses accept NodePorts (the default), so the nodeport-ips set is not used;
    // add + delete removes it whether it exists or not.
    emit!(
        out,
        "add set {T} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    emit!(out, "delete set {T} nodeport-ips");
    emit!(
        out,
        "add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    );
    emit!(
        out,
        "add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    );
    emit!(
        out,
        "add chain {T} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    emit!(out, "flush chain {T} reject-chain");
    emit!(out, "add rule {T} reject-chain reject");
    emit!(
        out,
        "add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    emit!(
        out,
        "add rule {T} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    );
    emit!(
        out,
        "add map {T} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    );
    emit!(
        out,
        "add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
    );
    emit!(
        out,
        "add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    emit!(
        out,
        "add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
    );
    emit!(
        out,
        "add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips"
    );
    emit!(
        out,
        "add rule {T} services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    );
    emit!(out, "flush set {T} cluster-ips");
    for map in [
        "service-ips",
        "firewall-ips",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "service-nodeports",
    ] {
        emit!(out, "flush map {T} {map}");
    }

    let mut vips: HashSet<Ipv4Addr> = HashSet::new();
    for svc in &set.services {
        for port in &svc.ports {
            if vips.insert(svc.vip) {
                emit!(out, "add element {T} cluster-ips {{ {} }}", svc.vip);
            }
            nft_port_add(&mut out, svc, port, &cidr, &mut created);
        }
    }
    out
}

/// Flush and delete a chain nothing refers to any more (after this transaction's flushes).
fn nft_remove_chain(out: &mut String, chain: &str) {
    emit!(out, "flush chain {T} {chain}");
    emit!(out, "delete chain {T} {chain}");
}

/// Everything a service port had, removed (the port is gone, or it lost all its endpoints).
fn nft_port_remove(out: &mut String, svc: &Service, port: &ServicePort) {
    let key = nft_service_key(svc, port);
    if port.endpoints.is_empty() {
        emit!(out, "delete element {T} no-endpoint-services {{ {key} }}");
        return;
    }
    emit!(out, "delete element {T} service-ips {{ {key} }}");
    nft_remove_chain(out, &nft_service_chain(svc, port));
    for &ep in &port.endpoints {
        nft_remove_chain(out, &nft_endpoint_chain(svc, port, ep));
    }
}

/// One `nft -f` transaction that moves one Service's endpoints from `before` to `after`, as
/// kube-proxy's partial sync does: the changed service port chain and all its endpoint chains are
/// (added and) flushed and written again, map elements are touched only if a port gained its
/// first or lost its last endpoint, and endpoint chains that are gone are flushed and deleted.
///
/// `cluster_cidr` is the set's (the masquerade rule names it, as `nft_full` wrote it). Ports are
/// paired by name and protocol; a port only in `after` is added, a port only in `before` removed. The counters of the rewritten
/// endpoint chains restart from zero.
pub fn nft_endpoint_change(
    before: &Service,
    after: &Service,
    cluster_cidr: (Ipv4Addr, u8),
) -> String {
    let cidr = cidr_string(cluster_cidr);
    let mut out = String::new();
    let mut created: HashSet<String> = HashSet::new();
    let same_port = |a: &ServicePort, b: &ServicePort| a.name == b.name && a.protocol == b.protocol;

    for new in &after.ports {
        let Some(old) = before.ports.iter().find(|old| same_port(old, new)) else {
            nft_port_add(&mut out, after, new, &cidr, &mut created);
            continue;
        };
        if old.endpoints.is_empty() || new.endpoints.is_empty() {
            if old.endpoints.is_empty() && new.endpoints.is_empty() {
                continue;
            }
            nft_port_remove(&mut out, before, old);
            nft_port_add(&mut out, after, new, &cidr, &mut created);
            continue;
        }
        for &ep in &new.endpoints {
            nft_ensure_chain(&mut out, &nft_endpoint_chain(after, new, ep), &mut created);
        }
        nft_ensure_chain(&mut out, &nft_service_chain(after, new), &mut created);
        nft_port_rules(&mut out, after, new, &cidr);
        for &ep in &old.endpoints {
            if !new.endpoints.contains(&ep) {
                nft_remove_chain(&mut out, &nft_endpoint_chain(before, old, ep));
            }
        }
    }
    for old in &before.ports {
        if !after.ports.iter().any(|new| same_port(old, new)) {
            nft_port_remove(&mut out, before, old);
        }
    }
    if after.ports.is_empty() && !before.ports.is_empty() {
        emit!(out, "delete element {T} cluster-ips {{ {} }}", before.vip);
    }
    out
}

/// Removes the whole table. The `add` first makes it succeed when the table is not there.
pub fn nft_delete() -> String {
    format!("add table {T}\ndelete table {T}\n")
}

/// Sum of the packets counted on the `dnat` rules of this service port's endpoint chains, read
/// from `nft list table ip kube-proxy` (nft prints `... counter packets 12 bytes 720 dnat to ...`
/// inside `chain endpoint-... {` blocks).
pub fn nft_dnat_packets(listing: &str, svc: &Service, port: &ServicePort) -> u64 {
    let chains: HashSet<String> = port
        .endpoints
        .iter()
        .map(|&ep| nft_endpoint_chain(svc, port, ep))
        .collect();
    let mut in_chain = false;
    let mut total = 0u64;
    for line in listing.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix("chain ") {
            let name = header.trim_end_matches('{').trim();
            in_chain = chains.contains(name);
            continue;
        }
        if !in_chain || !line.contains("dnat") {
            continue;
        }
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "counter" {
                if words.next() == Some("packets")
                    && let Some(n) = words.next().and_then(|n| n.parse::<u64>().ok())
                {
                    total += n;
                }
                break;
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4)
// ---------------------------------------------------------------------------------------------

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let bit_len = (data.len() as u64).wrapping_mul(8);
    let mut message = Vec::with_capacity(data.len() + 72);
    message.extend_from_slice(data);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_be_bytes());

    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for (k, wi) in SHA256_K.iter().zip(w.iter()) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(*wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn port(name: &str, number: u16, endpoints: &[&str]) -> ServicePort {
        ServicePort {
            name: name.into(),
            port: number,
            protocol: Protocol::Tcp,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn service(ns: &str, name: &str, vip: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            namespace: ns.into(),
            name: name.into(),
            vip: vip.parse().unwrap(),
            ports,
        }
    }

    const CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 244, 0, 0), 16);

    fn set(services: Vec<Service>) -> ServiceSet {
        ServiceSet {
            services,
            cluster_cidr: CIDR,
        }
    }

    /// `n` services of one port (80, `http`) with `eps` endpoints each, shaped like the
    /// benchmark's: VIPs 10.96.x.y, endpoints 10.244.x.y:8080.
    fn bench_set(n: usize, eps: usize) -> ServiceSet {
        let mut services = Vec::with_capacity(n);
        let mut next_ep = 0usize;
        for i in 0..n {
            let vip = Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8);
            let endpoints = (0..eps)
                .map(|_| {
                    let k = next_ep;
                    next_ep += 1;
                    SocketAddrV4::new(
                        Ipv4Addr::new(10, 244, (k / 250) as u8, (k % 250 + 1) as u8),
                        8080,
                    )
                })
                .collect();
            services.push(Service {
                namespace: "bench".into(),
                name: format!("svc-{i:05}"),
                vip,
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    endpoints,
                }],
            });
        }
        set(services)
    }

    /// The set the counter samples below were captured with: `default/web` with two endpoints
    /// and `default/other` with one; and the same with web's second endpoint replaced.
    fn traffic_sets() -> (ServiceSet, ServiceSet) {
        let before = set(vec![
            service(
                "default",
                "web",
                "10.96.0.10",
                vec![port("http", 80, &["10.244.2.10:8080", "10.244.2.11:8080"])],
            ),
            service(
                "default",
                "other",
                "10.96.0.20",
                vec![port("http", 80, &["10.244.2.10:8080"])],
            ),
        ]);
        let mut after = before.clone();
        after.services[0].ports[0].endpoints[1] = "10.244.2.12:8080".parse().unwrap();
        (before, after)
    }

    #[test]
    fn sha256_matches_the_standard_test_vectors() {
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // Exactly one block of padding boundary cases.
        assert_eq!(
            hex(sha256(&[b'a'; 64])),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"
        );
    }

    #[test]
    fn chain_names_are_the_ones_kube_proxy_derives() {
        let svc = service(
            "ns1",
            "svc1",
            "172.30.0.41",
            vec![port("p80", 80, &["10.180.0.1:80"])],
        );
        let p = &svc.ports[0];
        assert_eq!(iptables_svc_chain(&svc, p), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            iptables_sep_chain(&svc, p, "10.180.0.1:80".parse().unwrap()),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            nft_service_chain(&svc, p),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft_endpoint_chain(&svc, p, "10.180.0.1:80".parse().unwrap()),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn chain_names_are_deterministic_and_distinct_over_30k_services() {
        let a = bench_set(30_000, 1);
        let b = bench_set(30_000, 1);
        let mut seen = HashSet::new();
        for (x, y) in a.services.iter().zip(&b.services) {
            let (px, py) = (&x.ports[0], &y.ports[0]);
            let ep = px.endpoints[0];
            let svc_chain = iptables_svc_chain(x, px);
            let sep_chain = iptables_sep_chain(x, px, ep);
            assert_eq!(svc_chain, iptables_svc_chain(y, py));
            assert_eq!(sep_chain, iptables_sep_chain(y, py, ep));
            assert_eq!(svc_chain.len(), 25);
            assert!(
                svc_chain.len() <= 28,
                "iptables chain names are at most 28 bytes"
            );
            assert!(seen.insert(svc_chain));
            assert!(seen.insert(sep_chain));
            assert!(seen.insert(nft_service_chain(x, px)));
        }
        assert_eq!(seen.len(), 90_000);
    }

    #[test]
    fn probabilities_are_one_over_the_remaining_endpoints() {
        let svc = service(
            "default",
            "web",
            "10.96.0.10",
            vec![port(
                "http",
                80,
                &["10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.2:8080"],
            )],
        );
        let text = iptables_restore_input(&set(vec![svc.clone()]), None);
        let svc_chain = iptables_svc_chain(&svc, &svc.ports[0]);
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc_chain} ")) && l.contains("KUBE-SEP-"))
            .collect();
        assert_eq!(jumps.len(), 3);
        assert!(
            jumps[0].contains("--probability 0.3333333333 "),
            "{}",
            jumps[0]
        );
        assert!(
            jumps[1].contains("--probability 0.5000000000 "),
            "{}",
            jumps[1]
        );
        assert!(!jumps[2].contains("statistic"), "{}", jumps[2]);
        assert_eq!(probability(6), "0.1666666667");
    }

    #[test]
    fn restore_input_for_one_service_has_kube_proxy_lines() {
        let svc = service(
            "default",
            "web",
            "10.96.0.10",
            vec![port("http", 80, &["10.244.1.2:8080", "10.244.2.2:8080"])],
        );
        let p = &svc.ports[0];
        let svc_chain = iptables_svc_chain(&svc, p);
        let sep1 = iptables_sep_chain(&svc, p, "10.244.1.2:8080".parse().unwrap());
        let sep2 = iptables_sep_chain(&svc, p, "10.244.2.2:8080".parse().unwrap());
        let text = iptables_restore_input(&set(vec![svc.clone()]), None);
        let lines: Vec<&str> = text.lines().collect();
        let expect = [
            "*filter".to_owned(),
            ":KUBE-FORWARD - [0:0]".to_owned(),
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".to_owned(),
            "*nat".to_owned(),
            format!(":{svc_chain} - [0:0]"),
            format!(":{sep1} - [0:0]"),
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".to_owned(),
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".to_owned(),
            format!("-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 -j {svc_chain}"),
            format!("-A {svc_chain} -m comment --comment \"default/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10/32 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"),
            format!("-A {svc_chain} -m comment --comment \"default/web:http -> 10.244.1.2:8080\" -m statistic --mode random --probability 0.5000000000 -j {sep1}"),
            format!("-A {svc_chain} -m comment --comment \"default/web:http -> 10.244.2.2:8080\" -j {sep2}"),
            format!("-A {sep1} -m comment --comment default/web:http -s 10.244.1.2/32 -j KUBE-MARK-MASQ"),
            format!("-A {sep1} -m comment --comment default/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.2:8080"),
        ];
        for line in &expect {
            assert!(
                lines.contains(&line.as_str()),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(lines.iter().filter(|l| **l == "COMMIT").count(), 2);
        assert_eq!(lines.last(), Some(&"COMMIT"));
        // The nodeports jump is the last rule of nat KUBE-SERVICES.
        let last_services = lines
            .iter()
            .rev()
            .find(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last_services.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"));
        // No REJECT: every port has endpoints.
        assert!(!text.contains("REJECT"));
        assert!(!text.contains("-X "));
    }

    #[test]
    fn ports_without_endpoints_get_a_filter_reject_and_no_nat_chain() {
        let svc = service(
            "default",
            "empty",
            "10.96.0.11",
            vec![port("http", 80, &[])],
        );
        let text = iptables_restore_input(&set(vec![svc.clone()]), None);
        assert!(text.contains(
            "-A KUBE-SERVICES -m comment --comment \"default/empty:http has no endpoints\" -m tcp -p tcp -d 10.96.0.11/32 --dport 80 -j REJECT\n"
        ));
        assert!(!text.contains("KUBE-SVC-"));
        let nft = nft_full(&set(vec![svc]));
        assert!(nft.contains(
            "add element ip kube-proxy no-endpoint-services { 10.96.0.11 . tcp . 80 comment \"default/empty:http\" : goto reject-chain }\n"
        ));
        assert!(!nft.contains("service-ips { 10.96.0.11"));
        assert!(nft.contains("add element ip kube-proxy cluster-ips { 10.96.0.11 }\n"));
    }

    #[test]
    fn large_sets_drop_the_per_endpoint_comments_like_kube_proxy() {
        let text = iptables_restore_input(&bench_set(400, 3), None);
        let sep_rules: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-"))
            .collect();
        assert_eq!(sep_rules.len(), 2400);
        assert!(sep_rules.iter().all(|l| !l.contains("comment")));
        // The KUBE-SERVICES rules keep theirs.
        assert!(text.contains("--comment \"bench/svc-00399:http cluster IP\""));
    }

    #[test]
    fn restore_deletes_the_chains_of_endpoints_and_services_that_are_gone() {
        let before = bench_set(3, 3);
        let mut after = before.clone();
        let old_ep = after.services[1].ports[0].endpoints[2];
        let new_ep: SocketAddrV4 = "10.244.200.1:8080".parse().unwrap();
        after.services[1].ports[0].endpoints[2] = new_ep;
        let removed = after.services.remove(2);

        let text = iptables_restore_input(&after, Some(&before));
        let svc1 = &after.services[1];
        let gone_sep = iptables_sep_chain(svc1, &svc1.ports[0], old_ep);
        let new_sep = iptables_sep_chain(svc1, &svc1.ports[0], new_ep);
        let mut expected_x = vec![
            gone_sep.clone(),
            iptables_svc_chain(&removed, &removed.ports[0]),
        ];
        expected_x.extend(
            removed.ports[0]
                .endpoints
                .iter()
                .map(|&ep| iptables_sep_chain(&removed, &removed.ports[0], ep)),
        );
        let x_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("-X ")).collect();
        assert_eq!(x_lines.len(), expected_x.len(), "{x_lines:?}");
        for chain in &expected_x {
            assert!(x_lines.contains(&format!("-X {chain}").as_str()));
            // Declared too, so it is flushed before it is deleted.
            assert!(text.contains(&format!("\n:{chain} - [0:0]\n")));
        }
        assert!(text.contains(&format!("\n:{new_sep} - [0:0]\n")));
        assert!(!text.contains(&format!("-X {new_sep}")));
    }

    #[test]
    fn jump_rules_prepend_kube_proxy_jumps() {
        let rules = iptables_jump_rules();
        let joined: Vec<String> = rules
            .iter()
            .map(|(t, a)| format!("{t} {}", a.join(" ")))
            .collect();
        assert!(joined.contains(
            &"nat -I PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES".to_owned()
        ));
        assert!(joined.contains(
            &"filter -I FORWARD -m conntrack --ctstate NEW -m comment --comment kubernetes service portals -j KUBE-SERVICES".to_owned()
        ));
        assert!(joined.contains(
            &"filter -I FORWARD -m comment --comment kubernetes forwarding rules -j KUBE-FORWARD".to_owned()
        ));
        assert!(joined.contains(&"nat -I POSTROUTING -m comment --comment kubernetes postrouting rules -j KUBE-POSTROUTING".to_owned()));
        // The comment is one argument, not split at spaces.
        let (_, pre) = rules
            .iter()
            .find(|(t, a)| *t == "nat" && a[1] == "PREROUTING")
            .unwrap();
        assert!(pre.contains(&"kubernetes service portals".to_owned()));
    }

    /// `iptables-save -c -t nat` (iptables v1.8.9, nf_tables backend) captured in a throwaway
    /// namespace after loading `traffic_sets().0` and opening 7 connections to default/web
    /// (3 went to 10.244.2.10, 4 to 10.244.2.11) and 2 to default/other.
    const IPTABLES_SAVE_SAMPLE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 13:05:38 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ABBAAVGZD3EWJAZJ - [0:0]
:KUBE-SEP-IQIBSY2R4USWK4F3 - [0:0]
:KUBE-SEP-YYQCU4TCGTAHGAPQ - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-6M2PNY2GQKD6K7F5 - [0:0]
:KUBE-SVC-CDGGSHYLG3RE2FKL - [0:0]
[9:540] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[9:540] -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
[0:0] -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
[9:540] -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
[0:0] -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
[0:0] -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
[0:0] -A KUBE-SEP-ABBAAVGZD3EWJAZJ -s 10.244.2.10/32 -m comment --comment "default/other:http" -j KUBE-MARK-MASQ
[2:120] -A KUBE-SEP-ABBAAVGZD3EWJAZJ -p tcp -m comment --comment "default/other:http" -m tcp -j DNAT --to-destination 10.244.2.10:8080
[0:0] -A KUBE-SEP-IQIBSY2R4USWK4F3 -s 10.244.2.10/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
[3:180] -A KUBE-SEP-IQIBSY2R4USWK4F3 -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.10:8080
[0:0] -A KUBE-SEP-YYQCU4TCGTAHGAPQ -s 10.244.2.11/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ
[4:240] -A KUBE-SEP-YYQCU4TCGTAHGAPQ -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.11:8080
[7:420] -A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-CDGGSHYLG3RE2FKL
[2:120] -A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "default/other:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-6M2PNY2GQKD6K7F5
[0:0] -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
[0:0] -A KUBE-SVC-6M2PNY2GQKD6K7F5 ! -s 10.244.0.0/16 -d 10.96.0.20/32 -p tcp -m comment --comment "default/other:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
[2:120] -A KUBE-SVC-6M2PNY2GQKD6K7F5 -m comment --comment "default/other:http -> 10.244.2.10:8080" -j KUBE-SEP-ABBAAVGZD3EWJAZJ
[0:0] -A KUBE-SVC-CDGGSHYLG3RE2FKL ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
[3:180] -A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.2.10:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-IQIBSY2R4USWK4F3
[4:240] -A KUBE-SVC-CDGGSHYLG3RE2FKL -m comment --comment "default/web:http -> 10.244.2.11:8080" -j KUBE-SEP-YYQCU4TCGTAHGAPQ
COMMIT
# Completed on Sun Nov 22 13:05:38 2026
"#;

    #[test]
    fn iptables_counters_sum_the_dnat_rules_of_the_port() {
        let (before, after) = traffic_sets();
        let web = &before.services[0];
        let other = &before.services[1];
        assert_eq!(
            iptables_dnat_packets(IPTABLES_SAVE_SAMPLE, web, &web.ports[0]),
            7
        );
        assert_eq!(
            iptables_dnat_packets(IPTABLES_SAVE_SAMPLE, other, &other.ports[0]),
            2
        );
        // With 10.244.2.11 replaced by 10.244.2.12 only the kept endpoint's chain counts.
        let changed = &after.services[0];
        assert_eq!(
            iptables_dnat_packets(IPTABLES_SAVE_SAMPLE, changed, &changed.ports[0]),
            3
        );
        assert_eq!(iptables_dnat_packets("", web, &web.ports[0]), 0);
    }

    #[test]
    fn nft_change_rewrites_the_service_chain_and_swaps_endpoint_chains() {
        let before = bench_set(2, 3).services[1].clone();
        let mut after = before.clone();
        let old_ep = after.ports[0].endpoints[0];
        let new_ep: SocketAddrV4 = "10.244.200.1:8080".parse().unwrap();
        after.ports[0].endpoints[0] = new_ep;
        let p = &after.ports[0];
        let svc_chain = nft_service_chain(&after, p);
        let new_chain = nft_endpoint_chain(&after, p, new_ep);
        let old_chain = nft_endpoint_chain(&before, &before.ports[0], old_ep);
        let kept = nft_endpoint_chain(&after, p, p.endpoints[1]);

        let tx = nft_endpoint_change(&before, &after, CIDR);
        let lines: Vec<&str> = tx.lines().collect();
        let pos = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("missing {l:?} in\n{tx}"))
        };
        let add_new = pos(&format!("add chain ip kube-proxy {new_chain}"));
        let flush_svc = pos(&format!("flush chain ip kube-proxy {svc_chain}"));
        let vmap = pos(&format!(
            "add rule ip kube-proxy {svc_chain} numgen random mod 3 vmap {{ 0 : goto {new_chain} , 1 : goto {kept} , 2 : goto {} }}",
            nft_endpoint_chain(&after, p, p.endpoints[2])
        ));
        let delete_old = pos(&format!("delete chain ip kube-proxy {old_chain}"));
        assert!(add_new < flush_svc && flush_svc < vmap && vmap < delete_old);
        pos(&format!(
            "add rule ip kube-proxy {svc_chain} ip daddr {} tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            after.vip
        ));
        pos(&format!(
            "add rule ip kube-proxy {new_chain} meta l4proto tcp counter dnat to {new_ep}"
        ));
        // No map element changes: the service port keeps its chain.
        assert!(!tx.contains("element"));
        assert!(!tx.contains(&format!("delete chain ip kube-proxy {kept}")));
    }

    #[test]
    fn nft_change_to_and_from_no_endpoints_moves_the_port_between_maps() {
        let (before, _) = traffic_sets();
        let web = before.services[0].clone();
        let mut empty = web.clone();
        empty.ports[0].endpoints.clear();
        let svc_chain = nft_service_chain(&web, &web.ports[0]);

        let tx = nft_endpoint_change(&web, &empty, CIDR);
        assert!(
            tx.contains("delete element ip kube-proxy service-ips { 10.96.0.10 . tcp . 80 }\n")
        );
        assert!(tx.contains(
            "add element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"default/web:http\" : goto reject-chain }\n"
        ));
        assert!(tx.contains(&format!("delete chain ip kube-proxy {svc_chain}\n")));
        assert_eq!(tx.matches("delete chain").count(), 3);

        let tx = nft_endpoint_change(&empty, &web, CIDR);
        assert!(tx.contains(
            "delete element ip kube-proxy no-endpoint-services { 10.96.0.10 . tcp . 80 }\n"
        ));
        assert!(tx.contains(&format!(
            "add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc_chain} }}\n"
        )));
        assert!(!tx.contains("delete chain"));
    }

    #[test]
    fn nft_full_has_the_dispatch_map_and_counted_dnat() {
        let svc = service(
            "default",
            "web",
            "10.96.0.10",
            vec![port("http", 80, &["10.244.1.2:8080", "10.244.2.2:8080"])],
        );
        let p = &svc.ports[0];
        let tx = nft_full(&set(vec![svc.clone()]));
        let svc_chain = nft_service_chain(&svc, p);
        for line in [
            "add rule ip kube-proxy nat-prerouting jump services".to_owned(),
            "add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check".to_owned(),
            "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips"
                .to_owned(),
            "add element ip kube-proxy cluster-ips { 10.96.0.10 }".to_owned(),
            format!(
                "add element ip kube-proxy service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc_chain} }}"
            ),
            format!(
                "add rule ip kube-proxy {} meta l4proto tcp counter dnat to 10.244.2.2:8080",
                nft_endpoint_chain(&svc, p, "10.244.2.2:8080".parse().unwrap())
            ),
        ] {
            assert!(tx.lines().any(|l| l == line), "missing {line:?} in\n{tx}");
        }
    }

    /// `nft list table ip kube-proxy` (nftables 1.0.6) captured in a throwaway namespace after
    /// loading `nft_full(&traffic_sets().0)` and opening 5 connections to default/web (3 to
    /// 10.244.2.10, 2 to 10.244.2.11) and 3 to default/other. Verbatim, but only these chains
    /// and maps are kept.
    const NFT_LIST_SAMPLE: &str = r#"table ip kube-proxy {
	comment "rules for kube-proxy"
	set cluster-ips {
		type ipv4_addr
		comment "Active ClusterIPs"
		elements = { 10.96.0.10, 10.96.0.20 }
	}

	map service-ips {
		type ipv4_addr . inet_proto . inet_service : verdict
		comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
		elements = { 10.96.0.10 . tcp . 80 : goto service-SUSTUHLJ-default/web/tcp/http,
			     10.96.0.20 . tcp . 80 : goto service-CCBOMRIW-default/other/tcp/http }
	}

	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}

	chain services {
		ip daddr . meta l4proto . th dport vmap @service-ips
		fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
	}

	chain endpoint-ZRQGOVRH-default/web/tcp/http__10.244.2.10/8080 {
		ip saddr 10.244.2.10 jump mark-for-masquerade
		meta l4proto tcp counter packets 3 bytes 180 dnat to 10.244.2.10:8080
	}

	chain endpoint-ISHEYCOM-default/web/tcp/http__10.244.2.11/8080 {
		ip saddr 10.244.2.11 jump mark-for-masquerade
		meta l4proto tcp counter packets 2 bytes 120 dnat to 10.244.2.11:8080
	}

	chain service-SUSTUHLJ-default/web/tcp/http {
		ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
		numgen random mod 2 vmap { 0 : goto endpoint-ZRQGOVRH-default/web/tcp/http__10.244.2.10/8080, 1 : goto endpoint-ISHEYCOM-default/web/tcp/http__10.244.2.11/8080 }
	}

	chain endpoint-JPXGVMUW-default/other/tcp/http__10.244.2.10/8080 {
		ip saddr 10.244.2.10 jump mark-for-masquerade
		meta l4proto tcp counter packets 3 bytes 180 dnat to 10.244.2.10:8080
	}

	chain service-CCBOMRIW-default/other/tcp/http {
		ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
		numgen random mod 1 vmap { 0 : goto endpoint-JPXGVMUW-default/other/tcp/http__10.244.2.10/8080 }
	}
}
"#;

    #[test]
    fn nft_counters_sum_the_dnat_rules_of_the_port() {
        let (before, after) = traffic_sets();
        let web = &before.services[0];
        let other = &before.services[1];
        assert_eq!(nft_dnat_packets(NFT_LIST_SAMPLE, web, &web.ports[0]), 5);
        assert_eq!(nft_dnat_packets(NFT_LIST_SAMPLE, other, &other.ports[0]), 3);
        let changed = &after.services[0];
        assert_eq!(
            nft_dnat_packets(NFT_LIST_SAMPLE, changed, &changed.ports[0]),
            3
        );
        assert_eq!(nft_dnat_packets("", web, &web.ports[0]), 0);
    }

    /// Writes the rule files used to load and time the rules by hand in a throwaway namespace:
    /// `KPGEN_OUT=/tmp/kpgen cargo test -p skiff-bench --lib kubeproxy -- --ignored`.
    #[test]
    #[ignore = "writes sample rule files; run by hand with KPGEN_OUT set"]
    fn write_sample_rule_files() {
        let Some(dir) = std::env::var_os("KPGEN_OUT") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        for n in [1_000usize, 10_000] {
            let before = bench_set(n, 3);
            let mut after = before.clone();
            let changed = n / 2;
            after.services[changed].ports[0].endpoints[2] = "10.244.200.1:8080".parse().unwrap();
            write(
                &format!("ipt-{n}.rules"),
                &iptables_restore_input(&before, None),
            );
            write(
                &format!("ipt-{n}-change.rules"),
                &iptables_restore_input(&after, Some(&before)),
            );
            write(&format!("nft-{n}.nft"), &nft_full(&before));
            write(
                &format!("nft-{n}-change.nft"),
                &nft_endpoint_change(
                    &before.services[changed],
                    &after.services[changed],
                    after.cluster_cidr,
                ),
            );
        }
        write("nft-delete.nft", &nft_delete());
        let (traffic, changed) = traffic_sets();
        write("traffic-ipt.rules", &iptables_restore_input(&traffic, None));
        write(
            "traffic-ipt-change.rules",
            &iptables_restore_input(&changed, Some(&traffic)),
        );
        write("traffic-nft.nft", &nft_full(&traffic));
        write(
            "traffic-nft-change.nft",
            &nft_endpoint_change(&traffic.services[0], &changed.services[0], CIDR),
        );
        let mut emptied = changed.services[0].clone();
        emptied.ports[0].endpoints.clear();
        write(
            "traffic-nft-empty.nft",
            &nft_endpoint_change(&changed.services[0], &emptied, CIDR),
        );
        write(
            "traffic-nft-refill.nft",
            &nft_endpoint_change(&emptied, &traffic.services[0], CIDR),
        );
        let jumps: String = iptables_jump_rules()
            .iter()
            .map(|(table, args)| {
                let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
                format!("iptables -t {table} {}\n", quoted.join(" "))
            })
            .collect();
        write("jumps.sh", &jumps);
    }
}
