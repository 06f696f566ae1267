//! `describe`: a readable multi-line account of one object, with what it owns or serves.

use std::{collections::BTreeMap, time::SystemTime};

use skiff_api::{
    Object, ObjectMeta,
    kinds::{
        Condition, ConfigMap, Container, ContainerState, ContainerStatus, Deployment, Endpoints,
        Lease, Namespace, Node, Pod, PodTemplateSpec, Probe, ReplicaSet, ResourceRequirements,
        Secret, Service,
    },
    print::{self, NONE, age, labels, selector},
};

/// Objects fetched alongside the described one.
#[derive(Debug, Clone, Default)]
pub struct Related {
    /// A Deployment's ReplicaSets (those it controls).
    pub replica_sets: Vec<ReplicaSet>,
    /// A Service's Endpoints (the object of the same name).
    pub endpoints: Option<Endpoints>,
    /// A ReplicaSet's pods, or the pods bound to a Node.
    pub pods: Vec<Pod>,
}

/// The description of `object`.
pub fn describe(object: &Object, related: &Related, now: SystemTime) -> String {
    let mut d = Doc::default();
    metadata(&mut d, object.meta(), object.info().namespaced);
    match object {
        Object::Pod(p) => pod(&mut d, p),
        Object::Deployment(dep) => deployment(&mut d, dep, related),
        Object::ReplicaSet(rs) => replica_set(&mut d, rs, related),
        Object::Service(s) => service(&mut d, s, related),
        Object::Node(n) => node(&mut d, n, related, now),
        Object::Namespace(n) => namespace(&mut d, n),
        Object::Endpoints(e) => endpoints(&mut d, e),
        Object::Lease(l) => lease(&mut d, l),
        Object::ConfigMap(c) => config_map(&mut d, c),
        Object::Secret(s) => secret(&mut d, s),
    }
    d.render()
}

/// Lines of `key: value`, the values of one indentation aligned.
#[derive(Debug, Default)]
struct Doc {
    lines: Vec<Line>,
}

#[derive(Debug)]
enum Line {
    /// `key:` and a value (which may span lines), or a section heading without one.
    Field {
        indent: usize,
        key: String,
        value: Option<String>,
    },
    /// Text as is (tables).
    Raw(String),
}

impl Doc {
    fn field(&mut self, indent: usize, key: &str, value: impl Into<String>) {
        let value = value.into();
        self.lines.push(Line::Field {
            indent,
            key: key.to_owned(),
            value: Some(if value.is_empty() { NONE.into() } else { value }),
        });
    }

    fn section(&mut self, indent: usize, key: &str) {
        self.lines.push(Line::Field {
            indent,
            key: key.to_owned(),
            value: None,
        });
    }

    /// An aligned table at `indent`, with a dashed line under the header.
    fn table(&mut self, indent: usize, header: &[&str], rows: Vec<Vec<String>>) {
        let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
        let dashes: Vec<String> = header.iter().map(|h| "-".repeat(h.len())).collect();
        let mut all = vec![header, dashes];
        all.extend(rows);
        let text = crate::table::render(&all[0], &all[1..]);
        let pad = " ".repeat(indent);
        for line in text.lines() {
            self.lines.push(Line::Raw(format!("{pad}{line}")));
        }
    }

    fn render(&self) -> String {
        let mut widths: BTreeMap<usize, usize> = BTreeMap::new();
        for line in &self.lines {
            if let Line::Field {
                indent,
                key,
                value: Some(_),
            } = line
            {
                let w = widths.entry(*indent).or_default();
                *w = (*w).max(key.chars().count() + 1);
            }
        }
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Raw(text) => out.push_str(text),
                Line::Field { indent, key, value } => {
                    out.push_str(&" ".repeat(*indent));
                    out.push_str(key);
                    out.push(':');
                    if let Some(value) = value {
                        let column = widths.get(indent).copied().unwrap_or(0) + 2;
                        let first_pad = column - (key.chars().count() + 1);
                        for (i, part) in value.split('\n').enumerate() {
                            if i == 0 {
                                out.push_str(&" ".repeat(first_pad));
                            } else {
                                out.push('\n');
                                out.push_str(&" ".repeat(indent + column));
                            }
                            out.push_str(part);
                        }
                    }
                }
            }
            out.push('\n');
        }
        out
    }
}

fn lines_of(map: &BTreeMap<String, String>, sep: &str) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}{sep}{v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn metadata(d: &mut Doc, m: &ObjectMeta, namespaced: bool) {
    d.field(0, "Name", &m.name);
    if namespaced {
        d.field(0, "Namespace", &m.namespace);
    }
    d.field(
        0,
        "CreationTimestamp",
        m.creation_timestamp.as_deref().unwrap_or(NONE),
    );
    d.field(0, "Labels", lines_of(&m.labels, "="));
    d.field(0, "Annotations", lines_of(&m.annotations, ": "));
    if let Some(t) = &m.deletion_timestamp {
        let grace = m
            .deletion_grace_period_seconds
            .map(|g| format!(" (grace period {g}s)"))
            .unwrap_or_default();
        d.field(0, "Terminating Since", format!("{t}{grace}"));
    }
    if let Some(c) = m.controller_ref() {
        d.field(0, "Controlled By", format!("{}/{}", c.kind, c.name));
    } else if !m.owner_references.is_empty() {
        let owners: Vec<String> = m
            .owner_references
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        d.field(0, "Owned By", owners.join(", "));
    }
}

fn conditions(d: &mut Doc, conds: &[Condition], full: bool) {
    if conds.is_empty() {
        d.field(0, "Conditions", NONE);
        return;
    }
    d.section(0, "Conditions");
    let ts = |t: &Option<String>| t.clone().unwrap_or_default();
    if full {
        let rows = conds
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    ts(&c.last_heartbeat_time),
                    ts(&c.last_transition_time),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        d.table(
            2,
            &[
                "Type",
                "Status",
                "LastHeartbeatTime",
                "LastTransitionTime",
                "Reason",
                "Message",
            ],
            rows,
        );
    } else {
        let rows = conds
            .iter()
            .map(|c| vec![c.type_.clone(), c.status.clone(), c.reason.clone()])
            .collect();
        d.table(2, &["Type", "Status", "Reason"], rows);
    }
}

fn pod(d: &mut Doc, p: &Pod) {
    let node = match (p.spec.node_name.as_str(), p.status.host_ip.as_str()) {
        ("", _) => NONE.to_owned(),
        (n, "") => n.to_owned(),
        (n, ip) => format!("{n}/{ip}"),
    };
    d.field(0, "Node", node);
    d.field(
        0,
        "Start Time",
        p.status.start_time.as_deref().unwrap_or(NONE),
    );
    d.field(0, "Status", print::pod::status(p));
    if !p.status.reason.is_empty() {
        d.field(0, "Reason", &p.status.reason);
    }
    if !p.status.message.is_empty() {
        d.field(0, "Message", &p.status.message);
    }
    d.field(0, "IP", &p.status.pod_ip);
    d.field(
        0,
        "Restart Policy",
        if p.spec.restart_policy.is_empty() {
            "Always"
        } else {
            &p.spec.restart_policy
        },
    );
    containers(d, 0, &p.spec.containers, Some(&p.status.container_statuses));
    conditions(d, &p.status.conditions, false);
    d.field(0, "Node-Selectors", lines_of(&p.spec.node_selector, "="));
    let tolerations: Vec<String> = p
        .spec
        .tolerations
        .iter()
        .map(|t| {
            let mut s = t.key.clone();
            if !t.value.is_empty() {
                s.push('=');
                s.push_str(&t.value);
            }
            if !t.effect.is_empty() {
                s.push(':');
                s.push_str(&t.effect);
            }
            if t.operator == "Exists" && t.key.is_empty() {
                s = "op=Exists".into();
            } else if t.operator == "Exists" {
                s.push_str(" op=Exists");
            }
            if let Some(secs) = t.toleration_seconds {
                s.push_str(&format!(" for {secs}s"));
            }
            s
        })
        .collect();
    d.field(0, "Tolerations", tolerations.join("\n"));
}

/// The containers of a pod (with their statuses) or of a template (without).
fn containers(d: &mut Doc, indent: usize, cs: &[Container], statuses: Option<&[ContainerStatus]>) {
    d.section(indent, "Containers");
    for c in cs {
        let at = indent + 2;
        d.section(at, &c.name);
        let at = at + 2;
        let status = statuses.and_then(|s| s.iter().find(|s| s.name == c.name));
        if let Some(s) = status.filter(|s| !s.container_id.is_empty()) {
            d.field(at, "Container ID", &s.container_id);
        }
        d.field(at, "Image", &c.image);
        let ports: Vec<String> = c
            .ports
            .iter()
            .map(|p| {
                let proto = if p.protocol.is_empty() {
                    "TCP"
                } else {
                    &p.protocol
                };
                match p.name.as_str() {
                    "" => format!("{}/{proto}", p.container_port),
                    n => format!("{}/{proto} ({n})", p.container_port),
                }
            })
            .collect();
        d.field(
            at,
            if ports.len() > 1 { "Ports" } else { "Port" },
            ports.join(", "),
        );
        if !c.command.is_empty() {
            d.field(at, "Command", c.command.join("\n"));
        }
        if !c.args.is_empty() {
            d.field(at, "Args", c.args.join("\n"));
        }
        if !c.working_dir.is_empty() {
            d.field(at, "Working Dir", &c.working_dir);
        }
        if let Some(s) = status {
            state(d, at, "State", &s.state);
            if s.last_state != ContainerState::default() {
                state(d, at, "Last State", &s.last_state);
            }
            d.field(at, "Ready", if s.ready { "True" } else { "False" });
            d.field(at, "Restart Count", s.restart_count.to_string());
        }
        resources(d, at, &c.resources);
        if let Some(p) = &c.readiness_probe {
            d.field(at, "Readiness", probe(p));
        }
        if let Some(p) = &c.liveness_probe {
            d.field(at, "Liveness", probe(p));
        }
        let env: BTreeMap<String, String> = c
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        d.field(at, "Environment", lines_of(&env, ": "));
    }
}

fn state(d: &mut Doc, indent: usize, label: &str, s: &ContainerState) {
    let ts = |t: &Option<String>| t.clone().unwrap_or_default();
    if let Some(r) = &s.running {
        d.field(indent, label, "Running");
        if let Some(t) = &r.started_at {
            d.field(indent + 2, "Started", t);
        }
    } else if let Some(w) = &s.waiting {
        d.field(indent, label, "Waiting");
        if !w.reason.is_empty() {
            d.field(indent + 2, "Reason", &w.reason);
        }
        if !w.message.is_empty() {
            d.field(indent + 2, "Message", &w.message);
        }
    } else if let Some(t) = &s.terminated {
        d.field(indent, label, "Terminated");
        if !t.reason.is_empty() {
            d.field(indent + 2, "Reason", &t.reason);
        }
        if !t.message.is_empty() {
            d.field(indent + 2, "Message", &t.message);
        }
        d.field(indent + 2, "Exit Code", t.exit_code.to_string());
        if t.signal != 0 {
            d.field(indent + 2, "Signal", t.signal.to_string());
        }
        d.field(indent + 2, "Started", ts(&t.started_at));
        d.field(indent + 2, "Finished", ts(&t.finished_at));
    } else {
        d.field(indent, label, "Waiting");
    }
}

fn resources(d: &mut Doc, indent: usize, r: &ResourceRequirements) {
    for (label, map) in [("Limits", &r.limits), ("Requests", &r.requests)] {
        if map.is_empty() {
            continue;
        }
        d.section(indent, label);
        for (k, v) in map {
            d.field(indent + 2, k, v.to_string());
        }
    }
}

/// `http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`.
fn probe(p: &Probe) -> String {
    let action = if let Some(h) = &p.http_get {
        let scheme = if h.scheme.is_empty() {
            "http".to_owned()
        } else {
            h.scheme.to_ascii_lowercase()
        };
        format!("http-get {scheme}://{}:{}{}", h.host, h.port, h.path)
    } else if let Some(t) = &p.tcp_socket {
        format!("tcp-socket {}:{}", t.host, t.port)
    } else if let Some(e) = &p.exec {
        format!("exec [{}]", e.command.join(" "))
    } else {
        "<unknown>".to_owned()
    };
    format!(
        "{action} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds,
        p.timeout_seconds,
        p.period_seconds,
        p.success_threshold,
        p.failure_threshold
    )
}

fn template(d: &mut Doc, t: &PodTemplateSpec) {
    d.section(0, "Pod Template");
    d.field(2, "Labels", lines_of(&t.metadata.labels, "="));
    containers(d, 2, &t.spec.containers, None);
}

/// Whether a ReplicaSet runs a Deployment's current template (the controller adds the
/// `pod-template-hash` label to the ReplicaSet's copy).
fn runs_template(rs: &ReplicaSet, t: &PodTemplateSpec) -> bool {
    let mut mine = rs.spec.template.clone();
    mine.metadata.labels.remove("pod-template-hash");
    mine == *t
}

fn replica_set_summary(rs: &ReplicaSet) -> String {
    format!(
        "{} ({}/{} replicas created)",
        rs.metadata.name,
        rs.status.replicas,
        rs.spec.replicas.unwrap_or(1)
    )
}

fn deployment(d: &mut Doc, dep: &Deployment, related: &Related) {
    let (spec, st) = (&dep.spec, &dep.status);
    d.field(0, "Selector", selector(&spec.selector));
    d.field(
        0,
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            spec.replicas.unwrap_or(1),
            st.updated_replicas,
            st.replicas,
            st.available_replicas,
            st.unavailable_replicas
        ),
    );
    let strategy = if spec.strategy.type_.is_empty() {
        "RollingUpdate"
    } else {
        &spec.strategy.type_
    };
    d.field(0, "StrategyType", strategy);
    d.field(0, "MinReadySeconds", spec.min_ready_seconds.to_string());
    if let Some(ru) = &spec.strategy.rolling_update {
        let show = |v: &Option<_>| {
            v.as_ref()
                .map_or_else(|| "25%".to_owned(), ToString::to_string)
        };
        d.field(
            0,
            "RollingUpdateStrategy",
            format!(
                "{} max unavailable, {} max surge",
                show(&ru.max_unavailable),
                show(&ru.max_surge)
            ),
        );
    }
    if spec.paused {
        d.field(0, "Paused", "true");
    }
    template(d, &spec.template);
    conditions(d, &st.conditions, false);
    let (new, old): (Vec<&ReplicaSet>, Vec<&ReplicaSet>) = related
        .replica_sets
        .iter()
        .partition(|rs| runs_template(rs, &spec.template));
    let summaries = |v: &[&ReplicaSet]| {
        v.iter()
            .map(|rs| replica_set_summary(rs))
            .collect::<Vec<_>>()
            .join("\n")
    };
    d.field(0, "OldReplicaSets", summaries(&old));
    d.field(0, "NewReplicaSet", summaries(&new));
}

fn replica_set(d: &mut Doc, rs: &ReplicaSet, related: &Related) {
    d.field(0, "Selector", selector(&rs.spec.selector));
    d.field(
        0,
        "Replicas",
        format!(
            "{} current / {} desired",
            rs.status.replicas,
            rs.spec.replicas.unwrap_or(1)
        ),
    );
    let count = |phase: &str| {
        related
            .pods
            .iter()
            .filter(|p| {
                p.status.phase == phase || (phase == "Pending" && p.status.phase.is_empty())
            })
            .count()
    };
    d.field(
        0,
        "Pods Status",
        format!(
            "{} Running / {} Waiting / {} Succeeded / {} Failed",
            count("Running"),
            count("Pending"),
            count("Succeeded"),
            count("Failed")
        ),
    );
    template(d, &rs.spec.template);
    conditions(d, &rs.status.conditions, false);
}

fn service(d: &mut Doc, s: &Service, related: &Related) {
    let spec = &s.spec;
    d.field(0, "Selector", labels(&spec.selector));
    d.field(0, "Type", print::service::type_name(s));
    if !spec.ip_family_policy.is_empty() {
        d.field(0, "IP Family Policy", &spec.ip_family_policy);
    }
    if !spec.ip_families.is_empty() {
        d.field(0, "IP Families", spec.ip_families.join(","));
    }
    d.field(0, "IP", &spec.cluster_ip);
    if !spec.cluster_ips.is_empty() {
        d.field(0, "IPs", spec.cluster_ips.join(","));
    }
    for p in &spec.ports {
        let proto = print::service::protocol(p);
        let name = if p.name.is_empty() {
            "<unset>"
        } else {
            &p.name
        };
        d.field(0, "Port", format!("{name}  {}/{proto}", p.port));
        let target = p
            .target_port
            .as_ref()
            .map_or_else(|| p.port.to_string(), ToString::to_string);
        d.field(0, "TargetPort", format!("{target}/{proto}"));
        if p.node_port != 0 {
            d.field(0, "NodePort", format!("{name}  {}/{proto}", p.node_port));
        }
        let eps = related.endpoints.as_ref().map_or_else(
            || NONE.to_owned(),
            |e| {
                // The Endpoints ports that serve this Service port (matched by name).
                let mut only = e.clone();
                for subset in &mut only.subsets {
                    subset.ports.retain(|ep| ep.name == p.name);
                    if subset.ports.is_empty() {
                        subset.addresses.clear();
                    }
                }
                print::endpoints::summary(&only, usize::MAX)
            },
        );
        d.field(0, "Endpoints", eps);
    }
    d.field(
        0,
        "Session Affinity",
        if spec.session_affinity.is_empty() {
            "None"
        } else {
            &spec.session_affinity
        },
    );
    if !spec.external_traffic_policy.is_empty() {
        d.field(0, "External Traffic Policy", &spec.external_traffic_policy);
    }
    if !spec.internal_traffic_policy.is_empty() {
        d.field(0, "Internal Traffic Policy", &spec.internal_traffic_policy);
    }
}

fn node(d: &mut Doc, n: &Node, related: &Related, now: SystemTime) {
    let taints: Vec<String> = n
        .spec
        .taints
        .iter()
        .map(|t| match t.value.as_str() {
            "" => format!("{}:{}", t.key, t.effect),
            v => format!("{}={v}:{}", t.key, t.effect),
        })
        .collect();
    d.field(0, "Status", print::node::status(n));
    d.field(0, "Taints", taints.join("\n"));
    d.field(0, "Unschedulable", n.spec.unschedulable.to_string());
    conditions(d, &n.status.conditions, true);
    if n.status.addresses.is_empty() {
        d.field(0, "Addresses", NONE);
    } else {
        d.section(0, "Addresses");
        for a in &n.status.addresses {
            d.field(2, &a.type_, &a.address);
        }
    }
    for (label, map) in [
        ("Capacity", &n.status.capacity),
        ("Allocatable", &n.status.allocatable),
    ] {
        if map.is_empty() {
            continue;
        }
        d.section(0, label);
        for (k, v) in map {
            d.field(2, k, v.to_string());
        }
    }
    let info = &n.status.node_info;
    d.section(0, "System Info");
    for (k, v) in [
        ("Kernel Version", &info.kernel_version),
        ("OS Image", &info.os_image),
        ("Operating System", &info.operating_system),
        ("Architecture", &info.architecture),
        ("Container Runtime Version", &info.container_runtime_version),
        ("Kubelet Version", &info.kubelet_version),
    ] {
        d.field(2, k, v);
    }
    d.field(0, "PodCIDR", &n.spec.pod_cidr);
    d.field(0, "PodCIDRs", n.spec.pod_cidrs.join(","));
    let running: Vec<&Pod> = related
        .pods
        .iter()
        .filter(|p| !matches!(p.status.phase.as_str(), "Succeeded" | "Failed"))
        .collect();
    d.field(
        0,
        "Non-terminated Pods",
        format!("({} in total)", running.len()),
    );
    if !running.is_empty() {
        let rows = running
            .iter()
            .map(|p| {
                vec![
                    p.metadata.namespace.clone(),
                    p.metadata.name.clone(),
                    print::pod::status(p),
                    age(p.metadata.creation_timestamp.as_deref(), now),
                ]
            })
            .collect();
        d.table(2, &["Namespace", "Name", "Status", "Age"], rows);
    }
}

fn namespace(d: &mut Doc, n: &Namespace) {
    d.field(0, "Status", &n.status.phase);
}

fn endpoints(d: &mut Doc, e: &Endpoints) {
    if e.subsets.is_empty() {
        d.field(0, "Subsets", NONE);
        return;
    }
    d.section(0, "Subsets");
    for s in &e.subsets {
        let ips = |a: &[skiff_api::kinds::EndpointAddress]| {
            a.iter()
                .map(|a| a.ip.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        d.field(2, "Addresses", ips(&s.addresses));
        d.field(2, "NotReadyAddresses", ips(&s.not_ready_addresses));
        if s.ports.is_empty() {
            d.field(2, "Ports", NONE);
        } else {
            d.section(2, "Ports");
            let rows = s
                .ports
                .iter()
                .map(|p| {
                    vec![
                        if p.name.is_empty() {
                            "<unset>".to_owned()
                        } else {
                            p.name.clone()
                        },
                        p.port.to_string(),
                        if p.protocol.is_empty() {
                            "TCP".to_owned()
                        } else {
                            p.protocol.clone()
                        },
                    ]
                })
                .collect();
            d.table(4, &["Name", "Port", "Protocol"], rows);
        }
    }
}

fn lease(d: &mut Doc, l: &Lease) {
    let s = &l.spec;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<i32>| v.map(|n| n.to_string()).unwrap_or_default();
    d.field(0, "Holder Identity", text(&s.holder_identity));
    d.field(0, "Lease Duration Seconds", num(s.lease_duration_seconds));
    d.field(0, "Acquire Time", text(&s.acquire_time));
    d.field(0, "Renew Time", text(&s.renew_time));
    d.field(0, "Lease Transitions", num(s.lease_transitions));
}

/// A `Data` or `BinaryData` heading underlined as kubectl does.
fn heading(d: &mut Doc, title: &str) {
    d.lines.push(Line::Raw(String::new()));
    d.lines.push(Line::Raw(title.to_owned()));
    d.lines.push(Line::Raw("====".to_owned()));
}

/// kubectl's ConfigMap description: each text value in full, binary values by size.
fn config_map(d: &mut Doc, c: &ConfigMap) {
    heading(d, "Data");
    for (k, v) in &c.data {
        d.lines.push(Line::Raw(format!("{k}:\n----\n{v}\n")));
    }
    heading(d, "BinaryData");
    for (k, v) in &c.binary_data {
        d.lines.push(Line::Raw(format!("{k}: {} bytes", v.len())));
    }
}

/// kubectl's Secret description: the type and each key's size, never a value.
fn secret(d: &mut Doc, s: &Secret) {
    d.lines.push(Line::Raw(String::new()));
    d.lines.push(Line::Raw(format!("Type:  {}", s.type_)));
    heading(d, "Data");
    let width = s.data.keys().map(|k| k.len() + 1).max().unwrap_or(0);
    for (k, v) in &s.data {
        d.lines.push(Line::Raw(format!(
            "{:<width$}  {} bytes",
            format!("{k}:"),
            v.len()
        )));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use skiff_api::{
        Kind,
        kinds::{
            Condition, DeploymentSpec, EndpointAddress, EndpointPort, EndpointSubset, PodSpec,
            ReplicaSetSpec, ReplicaSetStatus, ServicePort, ServiceSpec,
        },
        meta::OwnerReference,
    };

    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            creation_timestamp: Some("2026-11-18T11:00:00Z".into()),
            ..ObjectMeta::default()
        }
    }

    fn template() -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: ObjectMeta {
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..ObjectMeta::default()
            },
            spec: PodSpec {
                containers: vec![Container {
                    name: "nginx".into(),
                    image: "nginx:1.27".into(),
                    ..Container::default()
                }],
                ..PodSpec::default()
            },
        }
    }

    fn replica_set(name: &str, t: PodTemplateSpec, replicas: i32) -> ReplicaSet {
        let mut rs = ReplicaSet {
            metadata: meta(name),
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                template: t,
                ..ReplicaSetSpec::default()
            },
            status: ReplicaSetStatus {
                replicas,
                ..ReplicaSetStatus::default()
            },
        };
        rs.metadata.owner_references = vec![OwnerReference {
            kind: "Deployment".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }];
        rs.spec
            .template
            .metadata
            .labels
            .insert("pod-template-hash".into(), name.into());
        rs
    }

    #[test]
    fn a_deployment_description_shows_its_new_and_old_replica_sets() {
        let dep = Deployment {
            metadata: meta("web"),
            spec: DeploymentSpec {
                replicas: Some(3),
                template: template(),
                ..DeploymentSpec::default()
            },
            status: skiff_api::kinds::DeploymentStatus {
                conditions: vec![Condition {
                    type_: "Available".into(),
                    status: "True".into(),
                    reason: "MinimumReplicasAvailable".into(),
                    ..Condition::default()
                }],
                ..Default::default()
            },
        };
        let mut old_template = template();
        old_template.spec.containers[0].image = "nginx:1.26".into();
        let related = Related {
            replica_sets: vec![
                replica_set("web-new", template(), 3),
                replica_set("web-old", old_template, 0),
            ],
            ..Related::default()
        };
        let text = describe(&dep.into_object(), &related, now());
        assert!(text.starts_with("Name:  "), "{text}");
        for want in [
            "Namespace:",
            "Labels:",
            "app=web",
            "Replicas:",
            "3 desired | 0 updated | 0 total | 0 available | 0 unavailable",
            "Image:",
            "nginx:1.27",
            "NewReplicaSet:",
            "web-new (3/3 replicas created)",
            "OldReplicaSets:",
            "web-old (0/0 replicas created)",
            "Available   True     MinimumReplicasAvailable",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn a_service_description_shows_the_endpoints_of_each_port() {
        let svc = Service {
            metadata: meta("web"),
            spec: ServiceSpec {
                cluster_ip: "10.96.0.10".into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 80,
                    ..ServicePort::default()
                }],
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        let related = Related {
            endpoints: Some(Endpoints {
                metadata: meta("web"),
                subsets: vec![EndpointSubset {
                    addresses: vec![EndpointAddress {
                        ip: "10.244.1.2".into(),
                        ..EndpointAddress::default()
                    }],
                    ports: vec![EndpointPort {
                        name: "http".into(),
                        port: 8080,
                        ..EndpointPort::default()
                    }],
                    ..EndpointSubset::default()
                }],
            }),
            ..Related::default()
        };
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
        };
        let text = describe(&svc.clone().into_object(), &related, now());
        assert_eq!(
            field(&text, "Endpoints:").as_deref(),
            Some("10.244.1.2:8080"),
            "{text}"
        );
        assert_eq!(
            field(&text, "Port:").as_deref(),
            Some("http  80/TCP"),
            "{text}"
        );
        let text = describe(&svc.into_object(), &Related::default(), now());
        assert_eq!(
            field(&text, "Endpoints:").as_deref(),
            Some("<none>"),
            "{text}"
        );
    }

    #[test]
    fn multi_line_values_continue_under_the_value_column() {
        let mut m = meta("p");
        m.labels.insert("tier".into(), "fe".into());
        let pod = Pod {
            metadata: m,
            ..Pod::default()
        };
        let text = describe(&pod.into_object(), &Related::default(), now());
        let at = text.find("Labels:").expect("labels");
        let lines: Vec<&str> = text[at..].lines().take(2).collect();
        let column = lines[0].find("app=web").expect("first label");
        assert_eq!(lines[1].find("tier=fe"), Some(column), "{text}");
    }

    #[test]
    fn a_secret_description_shows_sizes_never_values_and_a_config_map_shows_its_text() {
        let secret = Secret {
            metadata: meta("db"),
            type_: "Opaque".into(),
            data: [
                ("password".into(), skiff_api::kinds::Bytes::from("hunter2")),
                ("user".into(), skiff_api::kinds::Bytes::from("admin")),
            ]
            .into(),
            ..Secret::default()
        };
        let text = describe(&secret.into_object(), &Related::default(), now());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("Type:  Opaque"), "{text}");
        assert!(
            text.contains("Data\n====\npassword:  7 bytes\nuser:      5 bytes\n"),
            "{text}"
        );
        let cm = ConfigMap {
            metadata: meta("app"),
            data: [("mode".into(), "prod".into())].into(),
            binary_data: [("logo".into(), skiff_api::kinds::Bytes(vec![0, 1, 2]))].into(),
            ..ConfigMap::default()
        };
        let text = describe(&cm.into_object(), &Related::default(), now());
        assert!(
            text.contains("Data\n====\nmode:\n----\nprod\n\n\nBinaryData\n====\nlogo: 3 bytes\n"),
            "{text}"
        );
    }
}
