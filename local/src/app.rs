//! The two-tier application of `examples/app.yaml` on a local cluster, as `skiff-local demo` and
//! tests/tests/app.rs drive it: its objects put into one namespace and created, its pods waited
//! for, HTTP requests sent from inside a pod's network namespace, the answers of its app read,
//! and nginx's ConfigMap edited to a new version that is then waited for.
//!
//! Safety rule (DESIGN.md): every request starts on a thread that entered a pod's network
//! namespace (made by the cluster, with no route off the machine); the calling thread's
//! namespace is never used for one.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_api::{
    Object,
    client::{Client, ListParams},
    kinds::{ConfigMap, Namespace, Pod},
    manifest,
    object::Kind,
};

use crate::layout::Layout;

/// The manifest, as users find it in the repository.
pub const MANIFEST_PATH: &str = "examples/app.yaml";
/// Its text, built in so that the demo needs no checkout.
pub const MANIFEST: &str = include_str!("../../examples/app.yaml");
/// nginx's Deployment and Service, the application's front.
pub const FRONT: &str = "web";
/// The pod to send requests from.
pub const CLIENT: &str = "client";
/// nginx's ConfigMap and the key holding its server block.
pub const CONFIG: &str = "web-config";
pub const CONFIG_KEY: &str = "default.conf";
/// What nginx answers on [`VERSION_PATH`] as the manifest has it, and after the edit.
pub const VERSION: &str = "web v1";
pub const EDITED_VERSION: &str = "web v2";
/// The path nginx answers itself, with the version its configuration names.
pub const VERSION_PATH: &str = "/version";
/// Each request's connect and read deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a long wait says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The manifest's objects, each put into `namespace` (the manifest names none, so that it can
/// be applied to any namespace).
pub fn objects(namespace: &str) -> Result<Vec<Object>> {
    let mut objects =
        manifest::parse(MANIFEST.as_bytes()).with_context(|| format!("parsing {MANIFEST_PATH}"))?;
    for o in &mut objects {
        let ns = &o.meta().namespace;
        ensure!(
            ns.is_empty() || ns == namespace,
            "{MANIFEST_PATH} puts {} {} into namespace {ns:?}",
            o.info().kind,
            o.meta().name
        );
        o.meta_mut().namespace = namespace.to_owned();
    }
    Ok(objects)
}

/// One Deployment of the application: its name, the label selector of its pods, and how many
/// it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    pub selector: String,
    pub replicas: usize,
}

/// The Deployments among `objects`, in order.
pub fn deployments(objects: &[Object]) -> Result<Vec<Deployment>> {
    let mut out = Vec::new();
    for o in objects {
        let Object::Deployment(d) = o else { continue };
        ensure!(
            d.spec.selector.match_expressions.is_empty()
                && !d.spec.selector.match_labels.is_empty(),
            "Deployment {} selects its pods by matchLabels only here",
            d.metadata.name
        );
        let selector = d
            .spec
            .selector
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        out.push(Deployment {
            name: d.metadata.name.clone(),
            selector,
            replicas: usize::try_from(d.spec.replicas.unwrap_or(1))
                .context("a negative replica count")?,
        });
    }
    Ok(out)
}

/// Creates `namespace` unless it exists, then every object in order; `created` hears of each
/// object as the API server stored it.
pub async fn create(
    admin: &Client,
    namespace: &str,
    objects: &[Object],
    mut created: impl FnMut(&Object),
) -> Result<()> {
    let mut ns = Namespace::default();
    ns.metadata.name = namespace.to_owned();
    match admin.create_object(&ns.into_object()).await {
        Ok(stored) => created(&stored),
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e).with_context(|| format!("creating namespace {namespace}")),
    }
    for o in objects {
        let stored = admin
            .create_object(o)
            .await
            .with_context(|| format!("creating {}/{}", o.info().singular, o.meta().name))?;
        created(&stored);
    }
    Ok(())
}

/// One pod of the application as a wait sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPod {
    pub name: String,
    /// The Deployment it belongs to.
    pub deployment: String,
    pub uid: String,
    pub node: String,
    pub ip: String,
    pub ready: bool,
    /// Container restarts, summed over its containers.
    pub restarts: i32,
    /// Its state in a few words (phase, what a container waits for).
    pub state: String,
}

/// The application's pods at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub pods: Vec<AppPod>,
    /// Deployments without exactly their replicas of pods: name, pods seen, pods wanted.
    pub short: Vec<(String, usize, usize)>,
}

impl Snapshot {
    /// Every Deployment has exactly its replicas, all Ready.
    pub fn settled(&self) -> bool {
        self.short.is_empty() && self.pods.iter().all(|p| p.ready)
    }

    /// Each pod's uid and restarts by name: equal snapshots mean no pod was recreated or
    /// restarted in between.
    pub fn identities(&self) -> BTreeMap<String, (String, i32)> {
        self.pods
            .iter()
            .map(|p| (p.name.clone(), (p.uid.clone(), p.restarts)))
            .collect()
    }

    /// How far the application got, in one line.
    pub fn describe(&self) -> String {
        let ready = self.pods.iter().filter(|p| p.ready).count();
        let mut s = format!("{ready} of {} pods Ready", self.pods.len());
        for (d, seen, want) in &self.short {
            let _ = write!(s, "; {d}: {seen} of {want} pods");
        }
        let waiting: Vec<String> = self
            .pods
            .iter()
            .filter(|p| !p.ready)
            .map(|p| format!("{} ({})", p.name, p.state))
            .collect();
        if !waiting.is_empty() {
            let _ = write!(s, "; not Ready: {}", waiting.join(", "));
        }
        s
    }
}

/// The pods of `deployments` in `namespace` (those being deleted left out).
pub async fn snapshot(
    admin: &Client,
    namespace: &str,
    deployments: &[Deployment],
) -> Result<Snapshot> {
    let mut out = Snapshot::default();
    for d in deployments {
        let (pods, _) = admin
            .list::<Pod>(namespace, &ListParams::labels(d.selector.clone()))
            .await
            .with_context(|| format!("listing the pods of Deployment {}", d.name))?;
        let pods: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if pods.len() != d.replicas {
            out.short.push((d.name.clone(), pods.len(), d.replicas));
        }
        out.pods
            .extend(pods.into_iter().map(|p| app_pod(&d.name, p)));
    }
    Ok(out)
}

fn app_pod(deployment: &str, p: &Pod) -> AppPod {
    let mut state = if p.status.phase.is_empty() {
        "Pending".to_owned()
    } else {
        p.status.phase.clone()
    };
    for c in &p.status.container_statuses {
        if let Some(w) = &c.state.waiting {
            let _ = write!(state, ", {} {}", c.name, w.reason);
            if !w.message.is_empty() {
                let _ = write!(state, ": {}", w.message);
            }
        }
    }
    AppPod {
        name: p.metadata.name.clone(),
        deployment: deployment.to_owned(),
        uid: p.metadata.uid.clone(),
        node: p.spec.node_name.clone(),
        ip: p.status.pod_ip.clone(),
        ready: p.is_ready(),
        restarts: p
            .status
            .container_statuses
            .iter()
            .map(|c| c.restart_count)
            .sum(),
        state,
    }
}

/// Waits until every Deployment has its replicas Ready. `say` hears of each pod as it gets
/// Ready and, every few seconds, how far the rest got; `check` runs between polls (to stop on
/// an interrupt).
pub async fn wait_ready(
    admin: &Client,
    namespace: &str,
    deployments: &[Deployment],
    timeout: Duration,
    say: &dyn Fn(String),
    check: &dyn Fn() -> Result<()>,
) -> Result<Snapshot> {
    let started = Instant::now();
    let mut next_note = started + PROGRESS_EVERY;
    let mut seen_ready = BTreeSet::new();
    loop {
        check()?;
        let now = tokio::time::timeout(
            Duration::from_secs(10),
            snapshot(admin, namespace, deployments),
        )
        .await
        .context("the API server did not answer within 10 s")??;
        for p in now.pods.iter().filter(|p| p.ready) {
            if seen_ready.insert(p.name.clone()) {
                say(format!(
                    "  {}: Ready on {} ({}) after {:.1} s",
                    p.name,
                    p.node,
                    p.ip,
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if now.settled() {
            return Ok(now);
        }
        if started.elapsed() > timeout {
            bail!(
                "the pods of {MANIFEST_PATH} were not all Ready within {timeout:?}: {}",
                now.describe()
            );
        }
        if Instant::now() >= next_note {
            next_note += PROGRESS_EVERY;
            say(format!(
                "  still waiting after {:.0} s: {}",
                started.elapsed().as_secs_f64(),
                now.describe()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The network namespace of a running pod of a local cluster (its node's agent names it by the
/// pod's uid).
pub fn pod_netns(layout: &Layout, pod: &Pod) -> Result<PathBuf> {
    let i: usize = pod
        .spec
        .node_name
        .strip_prefix("node-")
        .and_then(|n| n.parse().ok())
        .with_context(|| {
            format!(
                "pod {} runs on {:?}, not a node of the cluster",
                pod.metadata.name, pod.spec.node_name
            )
        })?;
    // The uid comes from the API: only a well-formed one becomes a path.
    skiff_api::validate::uid(&pod.metadata.uid).map_err(|e| {
        anyhow::anyhow!(
            "pod {} has a malformed uid {:?}: {e}",
            pod.metadata.name,
            pod.metadata.uid
        )
    })?;
    let path = layout.node_root(i).join("netns").join(&pod.metadata.uid);
    ensure!(
        path.exists(),
        "the network namespace of pod {} ({}) does not exist",
        pod.metadata.name,
        path.display()
    );
    Ok(path)
}

/// One HTTP/1.0 GET of `path` from the calling thread's network namespace: the status code and
/// the body. Call it through [`get_in`] unless the thread is in a pod's namespace already.
fn get(addr: SocketAddrV4, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), REQUEST_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {FRONT}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no complete HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not HTTP: {head:?}"))?;
    Ok((code, body.trim().to_owned()))
}

/// One GET of `path` from inside the network namespace at `netns`.
pub fn get_in(netns: &Path, addr: SocketAddrV4, path: &str) -> Result<(u16, String)> {
    skiff_agent::netns::run_in(netns, || get(addr, path))
        .with_context(|| format!("entering {}", netns.display()))?
}

/// GETs `path` from inside `netns` until `accept` takes an answer (status code and body) or
/// `timeout` passes (a node may still be programming a Service); what `accept` made of it and
/// how many tries failed first.
pub fn get_until<T>(
    netns: &Path,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
    accept: impl Fn(u16, &str) -> Result<T>,
) -> Result<(T, usize)> {
    let deadline = Instant::now() + timeout;
    let mut failed = 0;
    loop {
        let why = match get_in(netns, addr, path).and_then(|(code, body)| accept(code, &body)) {
            Ok(t) => return Ok((t, failed)),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(why.context(format!(
                "GET {path} from {addr}: no good answer within {timeout:?}"
            )));
        }
        failed += 1;
        thread::sleep(Duration::from_millis(250));
    }
}

/// The body of a 200 answer.
pub fn ok_body(code: u16, body: &str) -> Result<String> {
    ensure!(code == 200, "HTTP {code}: {body:?}");
    Ok(body.to_owned())
}

/// GETs `path` from inside `netns` until it is answered 200 (see [`get_until`]).
pub fn get_ok(
    netns: &Path,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<(String, usize)> {
    get_until(netns, addr, path, timeout, ok_body)
}

/// One visit through nginx to the app, asked until the app answers with a count from redis
/// (an answer without one never reached redis, so asking again counts no visit twice): the
/// body, what it says, and how many tries failed first.
pub fn visit(
    netns: &Path,
    addr: SocketAddrV4,
    timeout: Duration,
) -> Result<(String, Visit, usize)> {
    let ((body, visit), failed) = get_until(netns, addr, "/", timeout, |code, body| {
        let body = ok_body(code, body)?;
        let visit = parse_visit(&body)?;
        Ok((body, visit))
    })?;
    Ok((body, visit, failed))
}

/// One answer of the app: which pod on which node served it, and the visit count redis gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub pod: String,
    pub node: String,
    pub count: u64,
}

/// Reads the app's answer, `app <pod> on <node>: visit <n>`.
pub fn parse_visit(body: &str) -> Result<Visit> {
    let parse = || {
        let rest = body.strip_prefix("app ")?;
        let (who, count) = rest.rsplit_once(": visit ")?;
        let (pod, node) = who.split_once(" on ")?;
        Some(Visit {
            pod: pod.to_owned(),
            node: node.to_owned(),
            count: count.parse().ok()?,
        })
    };
    parse().with_context(|| format!("not an answer of the app: {body:?}"))
}

/// Whether redis counted every visit exactly once: each count one more than the one before.
pub fn counted_once(visits: &[Visit]) -> bool {
    visits.windows(2).all(|w| w[1].count == w[0].count + 1)
}

/// Changes the version nginx's configuration serves from `from` to `to`; fails when the
/// ConfigMap does not hold `from`.
pub fn set_version(config: &mut ConfigMap, from: &str, to: &str) -> Result<()> {
    let conf = config
        .data
        .get_mut(CONFIG_KEY)
        .with_context(|| format!("ConfigMap {CONFIG} has no key {CONFIG_KEY}"))?;
    ensure!(
        conf.contains(&format!("\"{from}\\n\"")),
        "ConfigMap {CONFIG} does not serve {from:?}: {conf:?}"
    );
    *conf = conf.replace(&format!("\"{from}\\n\""), &format!("\"{to}\\n\""));
    Ok(())
}

/// Edits nginx's ConfigMap in `namespace` from version `from` to `to`, reading it again when
/// another writer got there first.
pub async fn edit_version(admin: &Client, namespace: &str, from: &str, to: &str) -> Result<()> {
    for _ in 0..10 {
        let mut config = admin
            .get::<ConfigMap>(namespace, CONFIG)
            .await
            .with_context(|| format!("reading ConfigMap {CONFIG}"))?;
        set_version(&mut config, from, to)?;
        match admin.update(&config).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e).with_context(|| format!("updating ConfigMap {CONFIG}")),
        }
    }
    bail!("updating ConfigMap {CONFIG} kept conflicting with other writers")
}

/// Asks [`VERSION_PATH`] from inside `netns` until `in_a_row` answers in a row say `version`
/// (with a backend picked per connection, every web pod serves it then, all but certainly).
/// `say` hears every few seconds what is served meanwhile; `check` runs between requests.
/// Returns the time it took.
pub fn wait_version(
    netns: &Path,
    addr: SocketAddrV4,
    version: &str,
    in_a_row: usize,
    timeout: Duration,
    say: &dyn Fn(String),
    check: &dyn Fn() -> Result<()>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut next_note = started + PROGRESS_EVERY;
    let mut row = 0;
    let mut last = String::new();
    while row < in_a_row {
        check()?;
        ensure!(
            started.elapsed() < timeout,
            "{version:?} was not served {in_a_row} times in a row within {timeout:?}; last answer {last:?}"
        );
        let (body, _) = get_ok(netns, addr, VERSION_PATH, timeout)?;
        row = if body == version { row + 1 } else { 0 };
        last = body;
        if row == 0 {
            if Instant::now() >= next_note {
                next_note += PROGRESS_EVERY;
                say(format!(
                    "  still served {last:?} after {:.0} s",
                    started.elapsed().as_secs_f64()
                ));
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_goes_whole_into_the_namespace_asked_for_with_its_three_deployments() {
        let objects = objects("two-tier").unwrap();
        assert!(objects.iter().all(|o| o.meta().namespace == "two-tier"));
        let deployments = deployments(&objects).unwrap();
        let summary: Vec<(&str, &str, usize)> = deployments
            .iter()
            .map(|d| (d.name.as_str(), d.selector.as_str(), d.replicas))
            .collect();
        assert_eq!(
            summary,
            [
                ("redis", "app=redis", 1),
                ("app", "app=app", 2),
                ("web", "app=web", 2)
            ]
        );
        assert!(
            objects
                .iter()
                .any(|o| matches!(o, Object::Pod(p) if p.metadata.name == CLIENT))
        );
        for o in &objects {
            let mut defaulted = o.clone();
            defaulted.apply_defaults();
            assert!(
                defaulted.validate().is_empty(),
                "{} {}: {:?}",
                o.info().kind,
                o.meta().name,
                defaulted.validate()
            );
        }
    }

    #[test]
    fn the_version_edit_changes_what_nginx_returns_and_refuses_a_config_without_it() {
        let mut config = objects("default")
            .unwrap()
            .into_iter()
            .find_map(|o| match o {
                Object::ConfigMap(c) if c.metadata.name == CONFIG => Some(c),
                _ => None,
            })
            .unwrap();
        set_version(&mut config, VERSION, EDITED_VERSION).unwrap();
        let conf = &config.data[CONFIG_KEY];
        assert!(conf.contains("return 200 \"web v2\\n\";"), "{conf}");
        assert!(!conf.contains("web v1"), "{conf}");
        // Edited once, it no longer serves v1: a second edit from v1 is refused.
        assert!(set_version(&mut config, VERSION, EDITED_VERSION).is_err());
    }

    #[test]
    fn answers_of_the_app_are_read_and_a_lost_or_double_visit_is_noticed() {
        let v = parse_visit("app app-6d9f-x2k on node-1: visit 41").unwrap();
        assert_eq!(
            v,
            Visit {
                pod: "app-6d9f-x2k".into(),
                node: "node-1".into(),
                count: 41
            }
        );
        // redis not reached: the script prints an empty count.
        assert!(parse_visit("app app-6d9f-x2k on node-1: visit ").is_err());
        assert!(parse_visit("<html>502 Bad Gateway</html>").is_err());
        let visit = |count| Visit { count, ..v.clone() };
        assert!(counted_once(&[visit(4), visit(5), visit(6)]));
        assert!(!counted_once(&[visit(4), visit(6)]));
        assert!(!counted_once(&[visit(4), visit(4)]));
    }

    #[test]
    fn a_snapshot_is_settled_only_with_every_replica_ready_and_says_what_is_missing() {
        let pod = |name: &str, ready| AppPod {
            name: name.into(),
            deployment: "web".into(),
            uid: format!("uid-{name}"),
            node: "node-0".into(),
            ip: "10.244.0.5".into(),
            ready,
            restarts: 0,
            state: "Pending, nginx ContainerCreating".into(),
        };
        let mut s = Snapshot {
            pods: vec![pod("web-a", true), pod("web-b", false)],
            short: Vec::new(),
        };
        assert!(!s.settled());
        assert_eq!(
            s.describe(),
            "1 of 2 pods Ready; not Ready: web-b (Pending, nginx ContainerCreating)"
        );
        s.pods[1].ready = true;
        assert!(s.settled());
        let before = s.identities();
        s.pods[1].restarts = 1;
        assert_ne!(before, s.identities());
        s.short.push(("redis".into(), 0, 1));
        assert!(!s.settled());
        assert!(
            s.describe().contains("; redis: 0 of 1 pods"),
            "{}",
            s.describe()
        );
    }
}
