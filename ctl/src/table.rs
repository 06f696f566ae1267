//! `get`'s tables: each kind's columns and cells as skiff-api prints them (the same the API
//! server's Tables are made of), with the NAMESPACE and LABELS columns kubectl adds, aligned.

use std::time::SystemTime;

use skiff_api::{
    Object, ResourceInfo,
    print::{self, Column},
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

impl TableOptions {
    /// Whether the table has column `c`: the wide ones only with `-o wide`.
    fn shows(self, c: &Column) -> bool {
        self.wide || c.priority == 0
    }
}

/// The header of a table of `info` objects: kubectl upper-cases the column names.
pub fn header(info: &ResourceInfo, opts: TableOptions) -> Vec<String> {
    let mut cols = Vec::new();
    if opts.all_namespaces && info.namespaced {
        cols.push("NAMESPACE".to_owned());
    }
    cols.extend(
        print::columns(info)
            .iter()
            .filter(|c| opts.shows(c))
            .map(|c| c.name.to_uppercase()),
    );
    if opts.show_labels {
        cols.push("LABELS".to_owned());
    }
    cols
}

/// One object's row, matching [`header`] for its kind.
pub fn row(object: &Object, opts: TableOptions, now: SystemTime) -> Vec<String> {
    let meta = object.meta();
    let info = object.info();
    let mut cells = Vec::new();
    if opts.all_namespaces && info.namespaced {
        cells.push(meta.namespace.clone());
    }
    cells.extend(
        print::columns(info)
            .iter()
            .zip(print::cells(object, now))
            .filter(|(c, _)| opts.shows(c))
            .map(|(_, cell)| cell.to_string()),
    );
    if opts.show_labels {
        cells.push(print::labels(&meta.labels));
    }
    cells
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
    use std::time::{Duration, UNIX_EPOCH};

    use skiff_api::{
        Kind, ObjectMeta,
        kinds::{
            Condition, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
            ContainerStateWaiting, ContainerStatus, Deployment, DeploymentSpec, DeploymentStatus,
            EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Lease, LeaseSpec, Namespace,
            NamespaceStatus, Node, NodeAddress, NodeSpec, NodeStatus, NodeSystemInfo, Pod, PodSpec,
            PodStatus, PodTemplateSpec, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus, Service,
            ServicePort, ServiceSpec,
        },
        meta::time,
        selector::LabelSelector,
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
        assert_eq!(cells(p, TableOptions::default()).1[2], "Terminating");

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
        assert_eq!(cells(n.clone(), wide()).1[1], "NotReady,SchedulingDisabled");
        n.status.conditions.clear();
        assert_eq!(cells(n, wide()).1[1], "Unknown,SchedulingDisabled");
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
