//! `get`'s tables: the columns of each kind, in kubectl's shapes, and their alignment.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use skiff_api::{
    Object, ResourceInfo,
    kinds::{
        Container, Deployment, Endpoints, Lease, Namespace, Node, Pod, ReplicaSet, Service,
        condition,
    },
    meta::time,
    selector::LabelSelector,
};

/// How a table is laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableOptions {
    /// `-o wide`: the extra columns of each kind.
    pub wide: bool,
    /// `-A`: a leading NAMESPACE column for namespaced kinds.
    pub all_namespaces: bool,
    /// `--show-labels`: a trailing LABELS column.
    pub show_labels: bool,
}

const NONE: &str = "<none>";

/// The header of a table of `info` objects.
pub fn header(info: &ResourceInfo, opts: TableOptions) -> Vec<String> {
    let (base, wide): (&[&str], &[&str]) = match info.plural {
        "pods" => (
            &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            &["IP", "NODE"],
        ),
        "services" => (
            &["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"],
            &["SELECTOR"],
        ),
        "deployments" => (
            &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "replicasets" => (
            &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            &["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "nodes" => (
            &["NAME", "STATUS", "AGE", "VERSION"],
            &[
                "INTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
        "namespaces" => (&["NAME", "STATUS", "AGE"], &[]),
        "endpoints" => (&["NAME", "ENDPOINTS", "AGE"], &[]),
        "leases" => (&["NAME", "HOLDER", "AGE"], &[]),
        _ => (&["NAME", "AGE"], &[]),
    };
    let mut cols = Vec::new();
    if opts.all_namespaces && info.namespaced {
        cols.push("NAMESPACE");
    }
    cols.extend_from_slice(base);
    if opts.wide {
        cols.extend_from_slice(wide);
    }
    if opts.show_labels {
        cols.push("LABELS");
    }
    cols.into_iter().map(str::to_owned).collect()
}

/// One object's row, matching [`header`] for its kind.
pub fn row(object: &Object, opts: TableOptions, now: SystemTime) -> Vec<String> {
    let meta = object.meta();
    let age = age(meta.creation_timestamp.as_deref(), now);
    let (base, wide) = match object {
        Object::Pod(p) => pod_row(p, age, now),
        Object::Service(s) => service_row(s, age),
        Object::Deployment(d) => deployment_row(d, age),
        Object::ReplicaSet(r) => replica_set_row(r, age),
        Object::Node(n) => node_row(n, age),
        Object::Namespace(n) => namespace_row(n, age),
        Object::Endpoints(e) => endpoints_row(e, age),
        Object::Lease(l) => lease_row(l, age),
    };
    let mut cells = Vec::new();
    if opts.all_namespaces && object.info().namespaced {
        cells.push(meta.namespace.clone());
    }
    cells.push(meta.name.clone());
    cells.extend(base);
    if opts.wide {
        cells.extend(wide);
    }
    if opts.show_labels {
        cells.push(labels(&meta.labels));
    }
    cells
}

type Cells = (Vec<String>, Vec<String>);

fn pod_row(p: &Pod, age: String, now: SystemTime) -> Cells {
    let total = p.spec.containers.len();
    let ready = p
        .status
        .container_statuses
        .iter()
        .filter(|c| c.ready)
        .count();
    let base = vec![
        format!("{ready}/{total}"),
        pod_status(p),
        restarts(p, now),
        age,
    ];
    let wide = vec![or_none(&p.status.pod_ip), or_none(&p.spec.node_name)];
    (base, wide)
}

/// The STATUS column: the phase, unless a container's state says more (kubectl's rules, less
/// the init containers Skiff does not have).
pub fn pod_status(p: &Pod) -> String {
    let mut reason = match (p.status.reason.as_str(), p.status.phase.as_str()) {
        ("", "") => "Pending".to_owned(),
        ("", phase) => phase.to_owned(),
        (r, _) => r.to_owned(),
    };
    let mut running = false;
    // In reverse, so the first container's state is the one shown.
    for cs in p.status.container_statuses.iter().rev() {
        let state = &cs.state;
        if let Some(w) = state.waiting.as_ref().filter(|w| !w.reason.is_empty()) {
            reason = w.reason.clone();
        } else if let Some(t) = &state.terminated {
            reason = if !t.reason.is_empty() {
                t.reason.clone()
            } else if t.signal != 0 {
                format!("Signal:{}", t.signal)
            } else {
                format!("ExitCode:{}", t.exit_code)
            };
        } else if cs.ready && state.running.is_some() {
            running = true;
        }
    }
    if reason == "Completed" && running {
        let ready = condition(&p.status.conditions, "Ready").is_some_and(|c| c.status == "True");
        reason = if ready { "Running" } else { "NotReady" }.to_owned();
    }
    if p.metadata.deletion_timestamp.is_some() {
        reason = if p.status.reason == "NodeLost" {
            "Unknown"
        } else {
            "Terminating"
        }
        .to_owned();
    }
    reason
}

/// `0`, or `3 (5m ago)` when the last restart's time is known.
fn restarts(p: &Pod, now: SystemTime) -> String {
    let count: i64 = p
        .status
        .container_statuses
        .iter()
        .map(|c| i64::from(c.restart_count))
        .sum();
    let last = p
        .status
        .container_statuses
        .iter()
        .filter_map(|c| c.last_state.terminated.as_ref()?.finished_at.as_deref())
        .filter_map(time::parse)
        .max();
    match last {
        Some(t) if count > 0 => format!("{count} ({} ago)", human_duration(since(t, now))),
        _ => count.to_string(),
    }
}

fn service_row(s: &Service, age: String) -> Cells {
    let spec = &s.spec;
    let type_ = if spec.type_.is_empty() {
        "ClusterIP"
    } else {
        &spec.type_
    };
    let base = vec![
        type_.to_owned(),
        or_none(&spec.cluster_ip),
        service_ports(s),
        age,
    ];
    (base, vec![labels_or(&spec.selector, NONE)])
}

/// `80/TCP,443:30443/TCP`.
pub fn service_ports(s: &Service) -> String {
    if s.spec.ports.is_empty() {
        return NONE.to_owned();
    }
    s.spec
        .ports
        .iter()
        .map(|p| {
            let proto = if p.protocol.is_empty() {
                "TCP"
            } else {
                &p.protocol
            };
            if p.node_port != 0 {
                format!("{}:{}/{proto}", p.port, p.node_port)
            } else {
                format!("{}/{proto}", p.port)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn deployment_row(d: &Deployment, age: String) -> Cells {
    let desired = d.spec.replicas.unwrap_or(1);
    let st = &d.status;
    let base = vec![
        format!("{}/{desired}", st.ready_replicas),
        st.updated_replicas.to_string(),
        st.available_replicas.to_string(),
        age,
    ];
    let (names, images) = containers(&d.spec.template.spec.containers);
    (base, vec![names, images, selector(&d.spec.selector)])
}

fn replica_set_row(r: &ReplicaSet, age: String) -> Cells {
    let base = vec![
        r.spec.replicas.unwrap_or(1).to_string(),
        r.status.replicas.to_string(),
        r.status.ready_replicas.to_string(),
        age,
    ];
    let (names, images) = containers(&r.spec.template.spec.containers);
    (base, vec![names, images, selector(&r.spec.selector)])
}

fn node_row(n: &Node, age: String) -> Cells {
    let info = &n.status.node_info;
    let base = vec![node_status(n), age, or_none(&info.kubelet_version)];
    let internal_ip = n
        .status
        .addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map_or_else(|| NONE.to_owned(), |a| a.address.clone());
    let wide = vec![
        internal_ip,
        or_unknown(&info.os_image),
        or_unknown(&info.kernel_version),
        or_unknown(&info.container_runtime_version),
    ];
    (base, wide)
}

/// `Ready`, `NotReady` or `Unknown` from the Ready condition, plus `,SchedulingDisabled`.
pub fn node_status(n: &Node) -> String {
    let mut status = match condition(&n.status.conditions, "Ready") {
        Some(c) if c.status == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }
    .to_owned();
    if n.spec.unschedulable {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn namespace_row(n: &Namespace, age: String) -> Cells {
    (vec![or_unknown(&n.status.phase), age], Vec::new())
}

fn endpoints_row(e: &Endpoints, age: String) -> Cells {
    (vec![endpoints_summary(e, 3), age], Vec::new())
}

/// `10.244.1.5:80,10.244.2.7:80 + 1 more...`: ready addresses with each port, at most `max`.
pub fn endpoints_summary(e: &Endpoints, max: usize) -> String {
    let mut all = Vec::new();
    for subset in &e.subsets {
        for addr in &subset.addresses {
            if subset.ports.is_empty() {
                all.push(addr.ip.clone());
            }
            for port in &subset.ports {
                all.push(format!("{}:{}", addr.ip, port.port));
            }
        }
    }
    if all.is_empty() {
        return NONE.to_owned();
    }
    let more = all.len().saturating_sub(max);
    all.truncate(max);
    let mut s = all.join(",");
    if more > 0 {
        s.push_str(&format!(" + {more} more..."));
    }
    s
}

fn lease_row(l: &Lease, age: String) -> Cells {
    let holder = l.spec.holder_identity.as_deref().unwrap_or_default();
    (vec![or_none(holder), age], Vec::new())
}

fn containers(cs: &[Container]) -> (String, String) {
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = cs.iter().map(|c| c.image.as_str()).collect();
    (or_none(&names.join(",")), or_none(&images.join(",")))
}

/// A spec selector as query text (`app=web`), `<none>` when empty.
pub fn selector(s: &LabelSelector) -> String {
    if s.is_empty() {
        return NONE.to_owned();
    }
    s.to_selector()
        .map_or_else(|e| format!("<invalid: {e}>"), |sel| sel.to_string())
}

/// `a=1,b=2`, `<none>` when empty.
pub fn labels(l: &BTreeMap<String, String>) -> String {
    labels_or(l, NONE)
}

fn labels_or(l: &BTreeMap<String, String>, empty: &str) -> String {
    if l.is_empty() {
        return empty.to_owned();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn or_none(s: &str) -> String {
    if s.is_empty() { NONE } else { s }.to_owned()
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() { "<unknown>" } else { s }.to_owned()
}

fn since(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or_default()
}

/// The AGE of an object created at `created` (RFC 3339), `<unknown>` without a timestamp.
pub fn age(created: Option<&str>, now: SystemTime) -> String {
    match created.and_then(time::parse) {
        Some(t) => human_duration(since(t, now)),
        None => "<unknown>".to_owned(),
    }
}

/// `5s`, `3m`, `2h`, `4d`, `2y`: the largest whole unit.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        86_400..31_536_000 => format!("{}d", s / 86_400),
        _ => format!("{}y", s / 31_536_000),
    }
}

/// Column widths that only grow, so rows printed one by one (a watch) stay aligned with the
/// table before them.
#[derive(Debug, Clone, Default)]
pub struct Aligner {
    widths: Vec<usize>,
}

/// Spaces between columns, as kubectl's.
const GAP: usize = 3;

impl Aligner {
    /// Widens the columns to fit `rows`.
    pub fn fit<'a>(&mut self, rows: impl IntoIterator<Item = &'a Vec<String>>) {
        for row in rows {
            if self.widths.len() < row.len() {
                self.widths.resize(row.len(), 0);
            }
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }

    /// One line (without the newline); the last column is not padded.
    pub fn line(&self, row: &[String]) -> String {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let width = self.widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + GAP;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out
    }
}

/// A whole table: the header and the rows, aligned, each line ending in a newline.
pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let mut aligner = Aligner::default();
    aligner.fit(std::iter::once(&header.to_vec()).chain(rows));
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        out.push_str(&aligner.line(row));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use skiff_api::{
        Kind, ObjectMeta,
        kinds::{
            Condition, ContainerState, ContainerStateRunning, ContainerStateTerminated,
            ContainerStateWaiting, ContainerStatus, DeploymentSpec, DeploymentStatus,
            EndpointAddress, EndpointPort, EndpointSubset, LeaseSpec, NamespaceStatus, NodeAddress,
            NodeSpec, NodeStatus, NodeSystemInfo, PodSpec, PodStatus, PodTemplateSpec,
            ReplicaSetSpec, ReplicaSetStatus, ServicePort, ServiceSpec,
        },
    };

    use super::*;

    /// 2026-11-18T11:06:40Z.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn meta(name: &str, ns: &str, age_secs: u64) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            creation_timestamp: Some(time::format(now() - Duration::from_secs(age_secs))),
            ..ObjectMeta::default()
        }
    }

    fn cells(o: impl Kind, opts: TableOptions) -> (Vec<String>, Vec<String>) {
        let o = o.into_object();
        (header(o.info(), opts), row(&o, opts, now()))
    }

    fn wide() -> TableOptions {
        TableOptions {
            wide: true,
            ..TableOptions::default()
        }
    }

    fn container(name: &str, image: &str) -> Container {
        Container {
            name: name.into(),
            image: image.into(),
            ..Container::default()
        }
    }

    fn status(name: &str, ready: bool, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            restart_count: restarts,
            state: ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..ContainerState::default()
            },
            ..ContainerStatus::default()
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: meta("web-1", "default", 5),
            spec: PodSpec {
                containers: vec![container("a", "nginx"), container("b", "busybox")],
                node_name: "node-1".into(),
                ..PodSpec::default()
            },
            status: PodStatus {
                phase: "Running".into(),
                pod_ip: "10.244.1.5".into(),
                container_statuses: vec![status("a", true, 0), status("b", false, 0)],
                ..PodStatus::default()
            },
        }
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        let cases = [
            (5, "5s"),
            (59, "59s"),
            (180, "3m"),
            (7_200, "2h"),
            (4 * 86_400 + 3_600, "4d"),
            (800 * 86_400, "2y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}");
        }
        assert_eq!(age(None, now()), "<unknown>");
        assert_eq!(age(Some("2026-11-18T11:06:35Z"), now()), "5s");
        // A clock behind the server's shows 0s, not a panic or a negative age.
        assert_eq!(age(Some("2026-11-18T12:00:00Z"), now()), "0s");
    }

    #[test]
    fn a_pod_with_one_of_two_containers_ready_shows_1_of_2() {
        let (h, r) = cells(pod(), TableOptions::default());
        assert_eq!(h, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
        assert_eq!(r, ["web-1", "1/2", "Running", "0", "5s"]);
        let (h, r) = cells(pod(), wide());
        assert_eq!(&h[5..], ["IP", "NODE"]);
        assert_eq!(&r[5..], ["10.244.1.5", "node-1"]);
    }

    #[test]
    fn a_pod_shows_its_first_container_reason_and_recent_restarts() {
        let mut p = pod();
        p.status.container_statuses[0].state = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: "CrashLoopBackOff".into(),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        };
        p.status.container_statuses[0].restart_count = 3;
        p.status.container_statuses[0].last_state.terminated = Some(ContainerStateTerminated {
            exit_code: 1,
            finished_at: Some(time::format(now() - Duration::from_secs(300))),
            ..ContainerStateTerminated::default()
        });
        let (_, r) = cells(p.clone(), TableOptions::default());
        assert_eq!(r[2], "CrashLoopBackOff");
        assert_eq!(r[3], "3 (5m ago)");

        p.metadata.deletion_timestamp = Some(time::format(now()));
        assert_eq!(pod_status(&p), "Terminating");

        let unscheduled = Pod {
            metadata: meta("p", "default", 1),
            spec: PodSpec {
                containers: vec![container("a", "x")],
                ..PodSpec::default()
            },
            status: PodStatus::default(),
        };
        let (_, r) = cells(unscheduled, wide());
        assert_eq!(r[1..3], ["0/1", "Pending"]);
        assert_eq!(r[5..], ["<none>", "<none>"]);
    }

    #[test]
    fn a_nodeport_service_shows_port_and_node_port() {
        let svc = Service {
            metadata: meta("web", "default", 180),
            spec: ServiceSpec {
                type_: "NodePort".into(),
                cluster_ip: "10.96.0.10".into(),
                selector: [("app".to_owned(), "web".to_owned())].into(),
                ports: vec![
                    ServicePort {
                        port: 80,
                        node_port: 30080,
                        protocol: "TCP".into(),
                        ..ServicePort::default()
                    },
                    ServicePort {
                        port: 53,
                        node_port: 30053,
                        protocol: "UDP".into(),
                        ..ServicePort::default()
                    },
                ],
                ..ServiceSpec::default()
            },
            ..Service::default()
        };
        let (h, r) = cells(svc.clone(), wide());
        assert_eq!(
            h,
            ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE", "SELECTOR"]
        );
        assert_eq!(
            r,
            [
                "web",
                "NodePort",
                "10.96.0.10",
                "80:30080/TCP,53:30053/UDP",
                "3m",
                "app=web"
            ]
        );

        let mut cluster_ip = svc;
        cluster_ip.spec.type_.clear();
        cluster_ip.spec.ports = vec![ServicePort {
            port: 80,
            ..ServicePort::default()
        }];
        let (_, r) = cells(cluster_ip, TableOptions::default());
        assert_eq!(r[1..4], ["ClusterIP", "10.96.0.10", "80/TCP"]);
    }

    #[test]
    fn a_deployment_shows_ready_of_desired() {
        let d = Deployment {
            metadata: meta("web", "default", 7_200),
            spec: DeploymentSpec {
                replicas: Some(3),
                selector: LabelSelector {
                    match_labels: [("app".to_owned(), "web".to_owned())].into(),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    spec: PodSpec {
                        containers: vec![container("nginx", "nginx:1.27")],
                        ..PodSpec::default()
                    },
                    ..PodTemplateSpec::default()
                },
                ..DeploymentSpec::default()
            },
            status: DeploymentStatus {
                ready_replicas: 2,
                updated_replicas: 3,
                available_replicas: 2,
                ..DeploymentStatus::default()
            },
        };
        let (h, r) = cells(d, wide());
        assert_eq!(
            h,
            [
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR"
            ]
        );
        assert_eq!(
            r,
            [
                "web",
                "2/3",
                "3",
                "2",
                "2h",
                "nginx",
                "nginx:1.27",
                "app=web"
            ]
        );
    }

    #[test]
    fn a_replica_set_shows_desired_current_ready() {
        let rs = ReplicaSet {
            metadata: meta("web-abc", "default", 4 * 86_400),
            spec: ReplicaSetSpec {
                replicas: Some(3),
                ..ReplicaSetSpec::default()
            },
            status: ReplicaSetStatus {
                replicas: 3,
                ready_replicas: 1,
                ..ReplicaSetStatus::default()
            },
        };
        let (h, r) = cells(rs, TableOptions::default());
        assert_eq!(h, ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]);
        assert_eq!(r, ["web-abc", "3", "3", "1", "4d"]);
    }

    #[test]
    fn a_node_status_comes_from_its_ready_condition_and_cordon() {
        let mut n = Node {
            metadata: meta("node-1", "", 60),
            spec: NodeSpec::default(),
            status: NodeStatus {
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Condition::default()
                }],
                addresses: vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.250.0.2".into(),
                }],
                node_info: NodeSystemInfo {
                    kubelet_version: "v0.1.0".into(),
                    ..NodeSystemInfo::default()
                },
                ..NodeStatus::default()
            },
        };
        let (h, r) = cells(n.clone(), TableOptions::default());
        assert_eq!(h, ["NAME", "STATUS", "AGE", "VERSION"]);
        assert_eq!(r, ["node-1", "Ready", "1m", "v0.1.0"]);
        let (h, r) = cells(n.clone(), wide());
        assert_eq!(h[4], "INTERNAL-IP");
        assert_eq!(r[4], "10.250.0.2");

        n.spec.unschedulable = true;
        n.status.conditions[0].status = "Unknown".into();
        assert_eq!(node_status(&n), "NotReady,SchedulingDisabled");
        n.status.conditions.clear();
        assert_eq!(node_status(&n), "Unknown,SchedulingDisabled");
    }

    #[test]
    fn cluster_scoped_kinds_get_no_namespace_column_with_all_namespaces() {
        let all = TableOptions {
            all_namespaces: true,
            ..TableOptions::default()
        };
        let ns = Namespace {
            metadata: meta("team", "", 30),
            status: NamespaceStatus {
                phase: "Active".into(),
            },
            ..Namespace::default()
        };
        let (h, r) = cells(ns, all);
        assert_eq!(h, ["NAME", "STATUS", "AGE"]);
        assert_eq!(r, ["team", "Active", "30s"]);

        let (h, r) = cells(pod(), all);
        assert_eq!(h[..2], ["NAMESPACE", "NAME"]);
        assert_eq!(r[..2], ["default", "web-1"]);
    }

    #[test]
    fn endpoints_show_ready_addresses_with_ports_and_a_count_of_the_rest() {
        let addr = |ip: &str| EndpointAddress {
            ip: ip.into(),
            ..EndpointAddress::default()
        };
        let e = Endpoints {
            metadata: meta("web", "default", 10),
            subsets: vec![EndpointSubset {
                addresses: ["10.244.1.2", "10.244.1.3", "10.244.2.2", "10.244.2.3"]
                    .map(addr)
                    .to_vec(),
                not_ready_addresses: vec![addr("10.244.3.3")],
                ports: vec![EndpointPort {
                    port: 80,
                    ..EndpointPort::default()
                }],
            }],
        };
        let (h, r) = cells(e, TableOptions::default());
        assert_eq!(h, ["NAME", "ENDPOINTS", "AGE"]);
        assert_eq!(
            r,
            [
                "web",
                "10.244.1.2:80,10.244.1.3:80,10.244.2.2:80 + 1 more...",
                "10s"
            ]
        );
        let empty = Endpoints {
            metadata: meta("none", "default", 10),
            subsets: Vec::new(),
        };
        assert_eq!(cells(empty, TableOptions::default()).1[1], "<none>");
    }

    #[test]
    fn a_lease_shows_its_holder() {
        let l = Lease {
            metadata: meta("node-1", "skiff-node-lease", 3),
            spec: LeaseSpec {
                holder_identity: Some("node-1".into()),
                ..LeaseSpec::default()
            },
        };
        let (h, r) = cells(l, TableOptions::default());
        assert_eq!(h, ["NAME", "HOLDER", "AGE"]);
        assert_eq!(r, ["node-1", "node-1", "3s"]);
    }

    #[test]
    fn labels_column_is_added_last() {
        let mut p = pod();
        p.metadata.labels = [("app", "web"), ("tier", "fe")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let opts = TableOptions {
            show_labels: true,
            ..TableOptions::default()
        };
        let (h, r) = cells(p, opts);
        assert_eq!(h.last().map(String::as_str), Some("LABELS"));
        assert_eq!(r.last().map(String::as_str), Some("app=web,tier=fe"));
    }

    #[test]
    fn tables_are_aligned_with_three_spaces_and_no_trailing_padding() {
        let header = ["NAME", "READY"].map(str::to_owned).to_vec();
        let rows = vec![
            ["a-long-name", "1/1"].map(str::to_owned).to_vec(),
            ["b", "0/1"].map(str::to_owned).to_vec(),
        ];
        assert_eq!(
            render(&header, &rows),
            "NAME          READY\na-long-name   1/1\nb             0/1\n"
        );
    }
}
