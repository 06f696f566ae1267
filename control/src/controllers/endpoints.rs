//! The Endpoints controller: for every Service with a selector, an Endpoints object of the same
//! name listing the matching pods' addresses (ready ones apart from the rest) and the ports each
//! serves the Service's ports on.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, btree_map::Entry},
    net::Ipv4Addr,
    sync::Arc,
    time::SystemTime,
};

use skiff_api::{
    Kind, ObjectMeta,
    client::{ClientError, DeleteParams},
    kinds::{
        ENDPOINTS_TRIGGER_TIME, EndpointAddress, EndpointPort, EndpointSubset, Endpoints,
        IntOrString, ObjectReference, Pod, Service, ServicePort,
    },
    meta::time,
};
use skiff_runtime::{Event, Queue, key_of};

use super::Context;

/// Keeps each selector Service's Endpoints equal to the pods it selects.
#[derive(Debug)]
pub struct EndpointsController {
    ctx: Arc<Context>,
    queue: Queue,
}

impl EndpointsController {
    /// Registers the handlers: Service changes queue the Service, pod changes queue every Service
    /// in the pod's namespace that selects it before or after, and changes to a managed Endpoints
    /// object queue its Service (so a stale or edited copy is put right).
    pub fn new(ctx: Arc<Context>) -> EndpointsController {
        let queue = Queue::default().with_metrics("endpoints", &ctx.queues);
        let informers = &ctx.informers;

        let q = queue.clone();
        informers
            .services
            .on_event(move |ev: &Event<Service>| q.add(key_of(&ev.object().metadata)));

        let q = queue.clone();
        let services = informers.services.clone();
        informers.pods.on_event(move |ev: &Event<Pod>| {
            let (old, new) = match ev {
                Event::Added(p) | Event::Deleted(p) if p.status.pod_ip.is_empty() => return,
                Event::Added(p) | Event::Deleted(p) => (None, p),
                Event::Updated { old, new } if !endpoints_may_change(old, new) => return,
                Event::Updated { old, new } => (Some(old), new),
            };
            let ns = &new.metadata.namespace;
            let affected = services.filter(|s| {
                s.metadata.namespace == *ns
                    && !s.spec.selector.is_empty()
                    && (selects(&s.spec.selector, &new.metadata.labels)
                        || old.is_some_and(|o| selects(&s.spec.selector, &o.metadata.labels)))
            });
            for s in affected {
                q.add(key_of(&s.metadata));
            }
        });

        let q = queue.clone();
        let services = informers.services.clone();
        informers.endpoints.on_event(move |ev: &Event<Endpoints>| {
            let key = key_of(&ev.object().metadata);
            // Only Endpoints this controller manages: user-managed ones are left alone.
            if services
                .get_key(&key)
                .is_some_and(|s| !s.spec.selector.is_empty())
            {
                q.add(key);
            }
        });

        EndpointsController { ctx, queue }
    }

    /// Works the queue with `settings.workers` workers, forever.
    pub async fn run(self) {
        // Every Service, and every Endpoints object: one whose Service went away while no
        // controller was running is deleted by its first sync.
        for s in self.ctx.informers.services.list() {
            self.queue.add(key_of(&s.metadata));
        }
        for e in self.ctx.informers.endpoints.list() {
            self.queue.add(key_of(&e.metadata));
        }
        let (queue, workers) = (self.queue.clone(), self.ctx.settings.workers);
        skiff_runtime::run_workers(
            Arc::new(self),
            queue,
            workers,
            "endpoints",
            |e: &ClientError| e.is_conflict() || e.is_already_exists(),
            |this: Arc<Self>, key: String| async move { this.sync(&key).await.map(|()| None) },
        )
        .await;
    }

    async fn sync(&self, key: &str) -> Result<(), ClientError> {
        let informers = &self.ctx.informers;
        let client = &self.ctx.client;
        let existing = informers.endpoints.get_key(key);
        let Some(svc) = informers.services.get_key(key) else {
            let Some(ep) = existing else { return Ok(()) };
            return self.delete_leftover(&ep).await;
        };
        if svc.spec.selector.is_empty() {
            return Ok(());
        }
        let pods = informers.pods.filter(|p| {
            p.metadata.namespace == svc.metadata.namespace
                && selects(&svc.spec.selector, &p.metadata.labels)
        });
        let subsets = desired_subsets(&svc, pods.iter().map(|p| &**p));
        match existing {
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: svc.metadata.name.clone(),
                        namespace: svc.metadata.namespace.clone(),
                        labels: svc.metadata.labels.clone(),
                        annotations: BTreeMap::from([(
                            ENDPOINTS_TRIGGER_TIME.to_owned(),
                            time::format_micros(SystemTime::now()),
                        )]),
                        ..ObjectMeta::default()
                    },
                    subsets,
                };
                client.create(&ep).await?;
                tracing::debug!(service = %key, "created Endpoints");
            }
            Some(ep) if is_current(&ep, &svc, &subsets) => {}
            Some(ep) => {
                let mut next = (*ep).clone();
                next.metadata.labels = svc.metadata.labels.clone();
                next.metadata.annotations.insert(
                    ENDPOINTS_TRIGGER_TIME.to_owned(),
                    time::format_micros(SystemTime::now()),
                );
                next.subsets = subsets;
                // Compare-and-swap on the cached revision: a conflict means the cache is behind.
                client.update(&next).await?;
                tracing::debug!(service = %key, "updated Endpoints");
            }
        }
        Ok(())
    }

    /// Deletes the Endpoints of a Service that is gone (asking the server, not the cache, whether
    /// it is).
    async fn delete_leftover(&self, ep: &Endpoints) -> Result<(), ClientError> {
        let client = &self.ctx.client;
        let (ns, name) = (&ep.metadata.namespace, &ep.metadata.name);
        match client.get::<Service>(ns, name).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let params = DeleteParams {
            precondition_uid: ep.metadata.uid.clone(),
            ..DeleteParams::default()
        };
        match client.delete(Endpoints::INFO, ns, name, params).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, name = %name, "deleted the Endpoints of a deleted Service");
                Ok(())
            }
            // Gone already, or replaced by a new object of the same name.
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether the stored Endpoints already say what the controller would write.
pub fn is_current(ep: &Endpoints, svc: &Service, subsets: &[EndpointSubset]) -> bool {
    ep.subsets == subsets && ep.metadata.labels == svc.metadata.labels
}

/// A Service's equality selector holds for `labels`. (An empty selector selects nothing here:
/// such Services' Endpoints are the user's.)
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a pod update can change any Endpoints: its labels, address, readiness, phase, node or
/// deletion changed.
pub fn endpoints_may_change(old: &Pod, new: &Pod) -> bool {
    old.metadata.labels != new.metadata.labels
        || old.status.pod_ip != new.status.pod_ip
        || old.status.phase != new.status.phase
        || old.spec.node_name != new.spec.node_name
        || old.metadata.deletion_timestamp.is_some() != new.metadata.deletion_timestamp.is_some()
        || old.is_ready() != new.is_ready()
}

fn protocol(p: &str) -> &str {
    if p.is_empty() { "TCP" } else { p }
}

/// The pod port a Service port sends to: a number as it is, a name looked up among the pod's
/// container ports of the same protocol. `None` when the pod has no such named port.
pub fn resolve_target_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        Some(IntOrString::Int(n)) if *n > 0 => Some(*n),
        None | Some(IntOrString::Int(_)) => Some(port.port),
        Some(IntOrString::String(name)) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|cp| {
                !cp.name.is_empty()
                    && cp.name == *name
                    && protocol(&cp.protocol) == protocol(&port.protocol)
            })
            .map(|cp| cp.container_port),
    }
}

/// Whether a pod belongs behind a Service at all: it has an address and has not finished.
fn is_endpoint_candidate(pod: &Pod) -> bool {
    !pod.status.pod_ip.is_empty() && !matches!(pod.status.phase.as_str(), "Succeeded" | "Failed")
}

fn address_of(pod: &Pod) -> EndpointAddress {
    EndpointAddress {
        ip: pod.status.pod_ip.clone(),
        hostname: String::new(),
        node_name: (!pod.spec.node_name.is_empty()).then(|| pod.spec.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Pod::INFO.kind.to_owned(),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        }),
    }
}

/// Orders addresses by IP (numerically when it parses), then by pod name.
fn address_order(a: &EndpointAddress, b: &EndpointAddress) -> Ordering {
    let ip = |x: &EndpointAddress| x.ip.parse::<Ipv4Addr>().ok();
    ip(a)
        .cmp(&ip(b))
        .then_with(|| a.ip.cmp(&b.ip))
        .then_with(|| target_name(a).cmp(&target_name(b)))
}

fn target_name(a: &EndpointAddress) -> Option<&str> {
    a.target_ref.as_ref().map(|r| r.name.as_str())
}

/// One subset's ports, as a sortable key: (port, protocol, name) in Service port order.
type PortsKey = Vec<(i32, String, String)>;

/// The subsets of `svc`'s Endpoints given candidate pods (those of other namespaces, not
/// selected, without an address or finished are skipped): ready pods not being deleted under
/// `addresses`, the others under `notReadyAddresses`; pods serving the same port numbers share a
/// subset. Subsets are ordered by their ports and addresses by IP, so the same cluster always
/// gives the same value.
pub fn desired_subsets<'a>(
    svc: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<EndpointSubset> {
    let headless = svc.spec.cluster_ip == "None";
    let mut groups: BTreeMap<PortsKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods {
        if pod.metadata.namespace != svc.metadata.namespace
            || !selects(&svc.spec.selector, &pod.metadata.labels)
            || !is_endpoint_candidate(pod)
        {
            continue;
        }
        let key: PortsKey = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_target_port(pod, sp)?;
                Some((port, protocol(&sp.protocol).to_owned(), sp.name.clone()))
            })
            .collect();
        // A pod serving none of the ports is no endpoint, except for a headless Service without
        // ports, which only publishes addresses.
        if key.is_empty() && !(svc.spec.ports.is_empty() && headless) {
            continue;
        }
        let ready = pod.is_ready() && pod.metadata.deletion_timestamp.is_none();
        let group = match groups.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert((Vec::new(), Vec::new())),
        };
        if ready {
            group.0.push(address_of(pod));
        } else {
            group.1.push(address_of(pod));
        }
    }
    groups
        .into_iter()
        .map(|(key, (mut addresses, mut not_ready_addresses))| {
            addresses.sort_by(address_order);
            not_ready_addresses.sort_by(address_order);
            EndpointSubset {
                addresses,
                not_ready_addresses,
                ports: key
                    .into_iter()
                    .map(|(port, protocol, name)| EndpointPort {
                        name,
                        port,
                        protocol,
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use skiff_api::kinds::{Condition, Container, ContainerPort};

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn service(ports: Vec<ServicePort>) -> Service {
        let mut s = Service::default();
        s.metadata.name = "web".into();
        s.metadata.namespace = "default".into();
        s.spec.selector = labels(&[("app", "web")]);
        s.spec.cluster_ip = "10.96.0.10".into();
        s.spec.ports = ports;
        s
    }

    fn port(name: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
        ServicePort {
            name: name.into(),
            protocol: "TCP".into(),
            port,
            target_port: target,
            node_port: 0,
            app_protocol: None,
        }
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.namespace = "default".into();
        p.metadata.uid = format!("uid-{name}");
        p.metadata.labels = labels(&[("app", "web")]);
        p.spec.node_name = "node-1".into();
        p.status.phase = "Running".into();
        p.status.pod_ip = ip.into();
        p.status.conditions.push(Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Condition::default()
        });
        p
    }

    fn with_port(mut p: Pod, name: &str, number: i32) -> Pod {
        p.spec.containers.push(Container {
            name: "c".into(),
            ports: vec![ContainerPort {
                name: name.into(),
                container_port: number,
                protocol: "TCP".into(),
                host_port: 0,
            }],
            ..Container::default()
        });
        p
    }

    fn ips(addresses: &[EndpointAddress]) -> Vec<&str> {
        addresses.iter().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_pods_are_addresses_and_unready_or_terminating_ones_are_not_ready_addresses() {
        let svc = service(vec![port("", 80, Some(IntOrString::Int(8080)))]);
        let mut terminating = pod("c", "10.244.0.3", true);
        terminating.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        let pods = [
            pod("a", "10.244.0.1", true),
            pod("b", "10.244.0.2", false),
            terminating,
        ];
        let subsets = desired_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 1);
        let s = &subsets[0];
        assert_eq!(ips(&s.addresses), ["10.244.0.1"]);
        assert_eq!(ips(&s.not_ready_addresses), ["10.244.0.2", "10.244.0.3"]);
        assert_eq!(
            s.ports,
            [EndpointPort {
                name: String::new(),
                port: 8080,
                protocol: "TCP".into()
            }]
        );
        let a = &s.addresses[0];
        assert_eq!(a.node_name.as_deref(), Some("node-1"));
        let r = a.target_ref.as_ref().unwrap();
        assert_eq!(
            (&*r.kind, &*r.namespace, &*r.name, &*r.uid),
            ("Pod", "default", "a", "uid-a")
        );
    }

    #[test]
    fn pods_without_ip_finished_unselected_or_elsewhere_are_left_out() {
        let svc = service(vec![port("", 80, None)]);
        let mut done = pod("done", "10.244.0.2", true);
        done.status.phase = "Succeeded".into();
        let mut other_ns = pod("other", "10.244.0.3", true);
        other_ns.metadata.namespace = "prod".into();
        let mut unselected = pod("db", "10.244.0.4", true);
        unselected.metadata.labels = labels(&[("app", "db")]);
        let pods = [
            pod("noip", "", true),
            done,
            other_ns,
            unselected,
            pod("ok", "10.244.0.5", true),
        ];
        let subsets = desired_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.244.0.5"]);
        assert!(subsets[0].not_ready_addresses.is_empty());
        // An unset targetPort means the Service's port.
        assert_eq!(subsets[0].ports[0].port, 80);
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_split_subsets_by_number() {
        let svc = service(vec![
            port("http", 80, Some(IntOrString::String("web".into()))),
            port("metrics", 9100, Some(IntOrString::Int(9100))),
        ]);
        let pods = [
            with_port(pod("old-1", "10.244.1.9", true), "web", 8080),
            with_port(pod("new-1", "10.244.1.2", true), "web", 9090),
            with_port(pod("old-2", "10.244.0.7", false), "web", 8080),
            // No container port named "web": serves only the numeric port.
            pod("bare", "10.244.0.1", true),
        ];
        let subsets = desired_subsets(&svc, &pods);
        let summary: Vec<(Vec<i32>, Vec<&str>, Vec<&str>)> = subsets
            .iter()
            .map(|s| {
                (
                    s.ports.iter().map(|p| p.port).collect(),
                    ips(&s.addresses),
                    ips(&s.not_ready_addresses),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (vec![8080, 9100], vec!["10.244.1.9"], vec!["10.244.0.7"]),
                (vec![9090, 9100], vec!["10.244.1.2"], vec![]),
                (vec![9100], vec!["10.244.0.1"], vec![]),
            ]
        );
        assert_eq!(subsets[0].ports[0].name, "http");
        assert_eq!(subsets[0].ports[1].name, "metrics");
    }

    #[test]
    fn a_named_port_of_another_protocol_does_not_resolve() {
        let mut sp = port("dns", 53, Some(IntOrString::String("dns".into())));
        sp.protocol = "UDP".into();
        let p = with_port(pod("a", "10.244.0.1", true), "dns", 5353);
        assert_eq!(resolve_target_port(&p, &sp), None);
        sp.protocol = "TCP".into();
        assert_eq!(resolve_target_port(&p, &sp), Some(5353));
        let svc = service(vec![{
            let mut s = port("dns", 53, Some(IntOrString::String("dns".into())));
            s.protocol = "UDP".into();
            s
        }]);
        assert!(desired_subsets(&svc, [&p]).is_empty());
    }

    #[test]
    fn addresses_sort_numerically_and_the_result_does_not_depend_on_pod_order() {
        let svc = service(vec![port("", 80, None)]);
        let mut pods = vec![
            pod("a", "10.244.0.10", true),
            pod("b", "10.244.0.9", true),
            pod("c", "10.244.1.1", true),
            pod("d", "10.244.0.100", true),
        ];
        let first = desired_subsets(&svc, &pods);
        assert_eq!(
            ips(&first[0].addresses),
            ["10.244.0.9", "10.244.0.10", "10.244.0.100", "10.244.1.1"]
        );
        pods.reverse();
        let second = desired_subsets(&svc, &pods);
        // Equal values are what lets the controller skip writes that change nothing.
        assert_eq!(first, second);
        let stored = Endpoints {
            metadata: ObjectMeta {
                resource_version: "7".into(),
                ..ObjectMeta::default()
            },
            subsets: first,
        };
        assert!(is_current(&stored, &svc, &second));
        pods[0].status.conditions[0].status = "False".into();
        assert!(!is_current(&stored, &svc, &desired_subsets(&svc, &pods)));
        let mut relabelled = svc.clone();
        relabelled.metadata.labels.insert("team".into(), "a".into());
        assert!(!is_current(&stored, &relabelled, &second));
    }

    #[test]
    fn a_headless_service_without_ports_publishes_addresses_and_others_publish_nothing() {
        let mut svc = service(vec![]);
        svc.spec.cluster_ip = "None".into();
        let pods = [pod("a", "10.244.0.1", true)];
        let subsets = desired_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.244.0.1"]);
        assert!(subsets[0].ports.is_empty());
        svc.spec.cluster_ip = "10.96.0.10".into();
        assert!(desired_subsets(&svc, &pods).is_empty());
    }

    #[test]
    fn no_matching_pods_gives_no_subsets() {
        let svc = service(vec![port("", 80, None)]);
        assert!(desired_subsets(&svc, std::iter::empty::<&Pod>()).is_empty());
    }

    #[test]
    fn an_empty_selector_selects_nothing_and_a_selector_needs_every_label() {
        let pod_labels = labels(&[("app", "web"), ("tier", "front")]);
        assert!(!selects(&BTreeMap::new(), &pod_labels));
        assert!(selects(&labels(&[("app", "web")]), &pod_labels));
        assert!(!selects(
            &labels(&[("app", "web"), ("tier", "back")]),
            &pod_labels
        ));
    }

    #[test]
    fn readiness_address_label_and_deletion_changes_trigger_but_other_status_does_not() {
        let base = pod("a", "10.244.0.1", true);
        let mut same = base.clone();
        same.status.start_time = Some("2026-01-01T00:00:00Z".into());
        assert!(!endpoints_may_change(&base, &same));
        let mut unready = base.clone();
        unready.status.conditions[0].status = "False".into();
        assert!(endpoints_may_change(&base, &unready));
        let mut moved = base.clone();
        moved.status.pod_ip = "10.244.0.2".into();
        assert!(endpoints_may_change(&base, &moved));
        let mut relabelled = base.clone();
        relabelled.metadata.labels.insert("v".into(), "2".into());
        assert!(endpoints_may_change(&base, &relabelled));
        let mut deleting = base.clone();
        deleting.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        assert!(endpoints_may_change(&base, &deleting));
    }
}
