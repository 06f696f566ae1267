//! How each kind is printed as a table: the columns `kubectl get` shows and the text of every
//! cell, in the shape of a server-side Table (`meta.k8s.io/v1`). The API server's strategies
//! make a kind's Table of them and skiffctl's `get` prints them, so the two cannot disagree.

mod configmap;
mod deployment;
pub mod endpoints;
mod format;
mod lease;
mod namespace;
pub mod node;
pub mod pod;
mod replicaset;
mod secret;
pub mod service;
mod template;

use std::time::SystemTime;

use serde::Serialize;

pub use self::format::{NONE, UNKNOWN, age, human_duration, labels, or_none, or_unknown, selector};
use crate::{
    Kind, Object, ObjectMeta, ResourceInfo,
    kinds::{
        ConfigMap, Deployment, Endpoints, Lease, Namespace, Node, Pod, ReplicaSet, Secret, Service,
    },
};

/// What a kind's table is made of, one impl per kind next to the cell texts particular to it.
pub trait Print {
    /// The columns, the name first; the wide ones (priority 1) after the others.
    const COLUMNS: &'static [Column];

    /// The object's row: a cell for each of [`Print::COLUMNS`].
    fn cells(&self, now: SystemTime) -> Vec<Cell>;
}

/// The columns of a resource's table, the name first.
pub fn columns(info: &ResourceInfo) -> &'static [Column] {
    let by_kind: [(&ResourceInfo, &'static [Column]); 10] = [
        (Namespace::INFO, Namespace::COLUMNS),
        (Node::INFO, Node::COLUMNS),
        (Pod::INFO, Pod::COLUMNS),
        (Service::INFO, Service::COLUMNS),
        (Endpoints::INFO, Endpoints::COLUMNS),
        (ConfigMap::INFO, ConfigMap::COLUMNS),
        (Secret::INFO, Secret::COLUMNS),
        (ReplicaSet::INFO, ReplicaSet::COLUMNS),
        (Deployment::INFO, Deployment::COLUMNS),
        (Lease::INFO, Lease::COLUMNS),
    ];
    by_kind
        .into_iter()
        .find(|(i, _)| *i == info)
        .map_or(DEFAULT_COLUMNS, |(_, columns)| columns)
}

/// An object's row, a cell for each of [`columns`] of its resource.
pub fn cells(o: &Object, now: SystemTime) -> Vec<Cell> {
    match o {
        Object::Namespace(n) => n.cells(now),
        Object::Node(n) => n.cells(now),
        Object::Pod(p) => p.cells(now),
        Object::Service(s) => s.cells(now),
        Object::Endpoints(e) => e.cells(now),
        Object::ConfigMap(c) => c.cells(now),
        Object::Secret(s) => s.cells(now),
        Object::ReplicaSet(r) => r.cells(now),
        Object::Deployment(d) => d.cells(now),
        Object::Lease(l) => l.cells(now),
    }
}

/// The type of a column's cells, as a Table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Integer,
}

/// One column of a kind's table (a Table's `columnDefinitions` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Column {
    /// `Name`, `Ready`, `Cluster-IP`: kubectl prints it upper-cased.
    pub name: &'static str,
    #[serde(rename = "type")]
    pub type_: ColumnType,
    /// `name` for the column that names the object, empty otherwise.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: shown with `-o wide` only.
    pub priority: u8,
}

impl Column {
    /// A column shown by default.
    pub const fn new(name: &'static str, type_: ColumnType, description: &'static str) -> Column {
        Column {
            name,
            type_,
            format: "",
            description,
            priority: 0,
        }
    }

    /// A column shown with `-o wide` only.
    pub const fn wide(self) -> Column {
        Column {
            priority: 1,
            ..self
        }
    }
}

/// The first column of every table.
pub const NAME: Column = Column {
    name: "Name",
    type_: ColumnType::String,
    format: "name",
    description: "Name must be unique within a namespace; it is what the object is asked for by.",
    priority: 0,
};

/// How long ago the object was created.
pub const AGE: Column = Column::new(
    "Age",
    ColumnType::String,
    "Time since the object was created (metadata.creationTimestamp).",
);

/// The columns of a resource with no printer of its own.
const DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

/// One cell of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Text(String),
    Integer(i64),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Text(s) => f.write_str(s),
            Cell::Integer(i) => write!(f, "{i}"),
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<i32> for Cell {
    fn from(i: i32) -> Cell {
        Cell::Integer(i64::from(i))
    }
}

/// The NAME cell.
fn name_cell(m: &ObjectMeta) -> Cell {
    Cell::Text(m.name.clone())
}

/// The AGE cell.
fn age_cell(m: &ObjectMeta, now: SystemTime) -> Cell {
    Cell::Text(age(m.creation_timestamp.as_deref(), now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{meta::time, object::RESOURCES};

    #[test]
    fn every_kind_has_a_cell_of_its_columns_type_for_each_column_and_starts_with_the_name()
    -> Result<(), crate::DecodeError> {
        let now = SystemTime::now();
        for info in RESOURCES {
            let json = format!(
                r#"{{"apiVersion":"{}","kind":"{}","metadata":{{"name":"x"}}}}"#,
                info.api_version, info.kind
            );
            let o = Object::from_json(json.as_bytes())?;
            let (columns, cells) = (columns(info), cells(&o, now));
            assert_eq!(cells.len(), columns.len(), "{}", info.plural);
            assert_eq!(columns[0], NAME, "{}", info.plural);
            assert_eq!(cells[0], Cell::Text("x".into()), "{}", info.plural);
            for (c, cell) in columns.iter().zip(&cells) {
                let integer = matches!(cell, Cell::Integer(_));
                assert_eq!(
                    integer,
                    c.type_ == ColumnType::Integer,
                    "{} {}",
                    info.plural,
                    c.name
                );
            }
            let wide_from = columns.iter().position(|c| c.priority > 0);
            let wide = wide_from.map_or(&[][..], |i| &columns[i..]);
            assert!(
                wide.iter().all(|c| c.priority > 0),
                "{}: the wide columns come last",
                info.plural
            );
        }
        Ok(())
    }

    #[test]
    fn columns_serialize_as_a_tables_column_definitions() -> serde_json::Result<()> {
        let v = serde_json::to_value([NAME, AGE.wide()])?;
        assert_eq!(v[0]["type"], "string");
        assert_eq!(v[0]["format"], "name");
        assert_eq!(v[1]["priority"], 1);
        assert!(v[1].get("format").is_none());
        assert_eq!(serde_json::to_value(Cell::Integer(3))?, 3);
        assert_eq!(serde_json::to_value(Cell::Text("x".into()))?, "x");
        Ok(())
    }

    /// One object of each kind with most of what its row shows filled in, and its row.
    const SAMPLES: &[(&str, &[&str])] = &[
        (
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1","namespace":"default","creationTimestamp":"2026-01-01T00:00:00Z","labels":{"app":"web"}},
            "spec":{"nodeName":"n1","containers":[{"name":"a","image":"busybox"},{"name":"b","image":"busybox"}]},
            "status":{"phase":"Running","podIP":"10.244.1.5","containerStatuses":[
                {"name":"a","image":"busybox","ready":true,"restartCount":2,"state":{"running":{}},
                 "lastState":{"terminated":{"exitCode":1,"finishedAt":"2026-01-01T00:01:00Z"}}},
                {"name":"b","image":"busybox","ready":false,"restartCount":0,"state":{"waiting":{"reason":"CrashLoopBackOff"}}}]}}"#,
            &[
                "web-1",
                "1/2",
                "CrashLoopBackOff",
                "2 (1h ago)",
                "2h",
                "10.244.1.5",
                "n1",
            ],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pending","namespace":"default"},"spec":{"containers":[{"name":"a","image":"busybox"}]}}"#,
            &[
                "pending",
                "0/1",
                "Pending",
                "0",
                "<unknown>",
                "<none>",
                "<none>",
            ],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default","creationTimestamp":"2026-01-01T00:00:00Z"},
            "spec":{"type":"NodePort","clusterIP":"10.96.0.10","selector":{"app":"web"},"ports":[{"port":80,"nodePort":30080},{"port":53,"protocol":"UDP"}]}}"#,
            &[
                "web",
                "NodePort",
                "10.96.0.10",
                "80:30080/TCP,53/UDP",
                "2h",
                "app=web",
            ],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"bare","namespace":"default"},"spec":{}}"#,
            &[
                "bare",
                "ClusterIP",
                "<none>",
                "<none>",
                "<unknown>",
                "<none>",
            ],
        ),
        (
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","namespace":"default","creationTimestamp":"2026-01-01T00:00:00Z"},
            "spec":{"replicas":3,"selector":{"matchLabels":{"app":"web"}},"template":{"spec":{"containers":[{"name":"a","image":"busybox"},{"name":"b","image":"nginx"}]}}},
            "status":{"readyReplicas":2,"updatedReplicas":3,"availableReplicas":1}}"#,
            &[
                "web",
                "2/3",
                "3",
                "1",
                "2h",
                "a,b",
                "busybox,nginx",
                "app=web",
            ],
        ),
        (
            r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"web-abc","namespace":"default"},
            "spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"spec":{"containers":[{"name":"a","image":"busybox"}]}}},
            "status":{"replicas":1,"readyReplicas":1}}"#,
            &[
                "web-abc",
                "1",
                "1",
                "1",
                "<unknown>",
                "a",
                "busybox",
                "app=web",
            ],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","creationTimestamp":"2026-01-01T00:00:00Z"},"spec":{"unschedulable":true},
            "status":{"conditions":[{"type":"Ready","status":"True"}],"addresses":[{"type":"InternalIP","address":"10.250.0.2"}],
                      "nodeInfo":{"kubeletVersion":"v0.1.0","osImage":"Debian","kernelVersion":"6.18","containerRuntimeVersion":"containerd://1.6"}}}"#,
            &[
                "n1",
                "Ready,SchedulingDisabled",
                "2h",
                "v0.1.0",
                "10.250.0.2",
                "Debian",
                "6.18",
                "containerd://1.6",
            ],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}"#,
            &[
                "n2",
                "Unknown",
                "<unknown>",
                "<none>",
                "<none>",
                "<unknown>",
                "<unknown>",
                "<unknown>",
            ],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team"},"status":{"phase":"Terminating"}}"#,
            &["team", "Terminating", "<unknown>"],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"web","namespace":"default"},
            "subsets":[{"addresses":[{"ip":"10.244.1.5"},{"ip":"10.244.2.7"}],"ports":[{"port":80},{"port":443}]}]}"#,
            &[
                "web",
                "10.244.1.5:80,10.244.1.5:443,10.244.2.7:80 + 1 more...",
                "<unknown>",
            ],
        ),
        (
            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"n1","namespace":"skiff-node-lease"},"spec":{"holderIdentity":"n1"}}"#,
            &["n1", "n1", "<unknown>"],
        ),
        (
            r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"free","namespace":"default"}}"#,
            &["free", "<none>", "<unknown>"],
        ),
        (
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"app","namespace":"default","creationTimestamp":"2026-01-01T00:00:00Z"},
            "data":{"a":"1","b":"2"},"binaryData":{"c":"AAE="}}"#,
            &["app", "3", "2h"],
        ),
        (
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"tls","namespace":"default","creationTimestamp":"2026-01-01T00:00:00Z"},
            "type":"kubernetes.io/tls","data":{"tls.crt":"Yw==","tls.key":"aw=="}}"#,
            &["tls", "kubernetes.io/tls", "2", "2h"],
        ),
    ];

    #[test]
    fn every_kind_prints_the_row_kubectl_get_shows() -> Result<(), crate::DecodeError> {
        let now = time::parse("2026-01-01T02:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        let mut seen = std::collections::BTreeSet::new();
        for (json, want) in SAMPLES {
            let o = Object::from_json(json.as_bytes())?;
            seen.insert(o.info().plural);
            let row: Vec<String> = cells(&o, now).iter().map(Cell::to_string).collect();
            assert_eq!(row, *want, "{}", o.info().plural);
        }
        assert_eq!(seen.len(), RESOURCES.len(), "a sample of every kind");
        Ok(())
    }
}
