//! The two-tier application of `examples/app.yaml`, unchanged, on a local cluster: nginx,
//! busybox and redis pulled from the cluster's registry, redis with its password from a Secret
//! and its configuration from a ConfigMap volume, an app finding redis through the Service
//! environment variables, nginx configured by a ConfigMap and proxying to the app. A client pod
//! reaches it all through the web Service; an edit of nginx's ConfigMap is served after a reload,
//! without a pod being recreated or restarted.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use skiff_api::kinds::{ConfigMap, Pod};
use skiff_tests::localcheck::LocalRun;

const MANIFEST: &str = include_str!("../../examples/app.yaml");
/// Pods of each Deployment in the manifest.
const APPS: [(&str, usize); 3] = [("redis", 1), ("app", 2), ("web", 2)];
const TIMEOUT: Duration = Duration::from_secs(120);

/// One HTTP/1.0 GET of `path` from the current namespace: the status code and the body.
fn get(addr: SocketAddrV4, path: &str) -> Result<(u16, String)> {
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: web\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
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

/// GETs `path` from inside `netns` until `accept` takes the answer or `timeout` passes.
fn get_until(
    netns: &Path,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
    accept: impl Fn(u16, &str) -> bool + Send + Sync,
) -> Result<String> {
    skiff_agent::netns::run_in(netns, || {
        let deadline = Instant::now() + timeout;
        loop {
            let got = get(addr, path);
            if let Ok((code, body)) = &got
                && accept(*code, body)
            {
                return Ok(body.clone());
            }
            if Instant::now() > deadline {
                bail!("GET {path} from {addr} never answered as expected; last: {got:?}");
            }
            thread::sleep(Duration::from_millis(250));
        }
    })?
}

/// Every Deployment's pods Running and Ready; their uids and restart counts by name.
fn wait_ready(run: &LocalRun) -> Result<BTreeMap<String, (String, i32)>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut all = BTreeMap::new();
        let mut settled = true;
        for (app, n) in APPS {
            let pods: Vec<Pod> = run.pods(&format!("app={app}"))?;
            settled &= pods.len() == n && pods.iter().all(Pod::is_ready);
            for p in pods {
                let restarts = p
                    .status
                    .container_statuses
                    .iter()
                    .map(|c| c.restart_count)
                    .sum();
                all.insert(p.metadata.name.clone(), (p.metadata.uid.clone(), restarts));
            }
        }
        if settled {
            return Ok(all);
        }
        if Instant::now() > deadline {
            let mut states = Vec::new();
            for (app, _) in APPS {
                for p in run.pods(&format!("app={app}"))? {
                    states.push(format!(
                        "{} {} ready={} {:?}",
                        p.metadata.name,
                        p.status.phase,
                        p.is_ready(),
                        p.status
                            .container_statuses
                            .iter()
                            .map(|c| &c.state)
                            .collect::<Vec<_>>()
                    ));
                }
            }
            bail!("the application was not Ready within {TIMEOUT:?}: {states:#?}");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_two_tier_example_runs_from_the_registry_and_serves_an_edited_configmap_after_a_reload()
-> Result<()> {
    // The agents re-read projected volumes every 2 s here (kubelet's period is a minute).
    let Some(run) = LocalRun::up("app", "ap", 2, &["--agent-arg=--volume-resync=2"])? else {
        return Ok(());
    };
    run.apply(MANIFEST)?;
    let before = wait_ready(&run)?;
    let client = run.pod_netns("client")?;
    let web = SocketAddrV4::new(run.cluster_ip("web")?, 80);

    // nginx -> the app's Service -> an app pod -> redis (password from the Secret): the visit
    // counter kept in redis goes up by one per request, whichever app pod answers.
    let mut visits = Vec::new();
    let mut answered_by = BTreeMap::<String, usize>::new();
    for _ in 0..8 {
        let body = get_until(&client, web, "/", TIMEOUT, |code, _| code == 200)?;
        let (who, n) = body
            .rsplit_once(": visit ")
            .with_context(|| format!("unexpected answer {body:?}"))?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("no visit count in {body:?}"))?;
        ensure!(who.starts_with("app app-"), "answered by {who:?}");
        *answered_by.entry(who.to_owned()).or_default() += 1;
        visits.push(n);
    }
    ensure!(
        visits.windows(2).all(|w| w[1] == w[0] + 1),
        "redis did not count every visit once: {visits:?}"
    );
    eprintln!("answers by app pod: {answered_by:?}, visits {visits:?}");

    let version = get_until(&client, web, "/version", TIMEOUT, |code, _| code == 200)?;
    ensure!(version == "web v1", "{version:?}");

    // An edit of nginx's ConfigMap reaches the mounted file, nginx reloads it, and every web pod
    // serves the new version; no pod is recreated or restarted.
    let edited = Instant::now();
    run.edit::<ConfigMap>("default", "web-config", |c| {
        if let Some(conf) = c.data.get_mut("default.conf") {
            *conf = conf.replace("web v1", "web v2");
        }
    })?;
    // Ten v2 answers in a row: with two web pods and a backend picked per connection, both
    // serve it (all but certainly).
    let deadline = Instant::now() + TIMEOUT;
    let mut in_a_row = 0;
    while in_a_row < 10 {
        ensure!(
            Instant::now() < deadline,
            "the edited ConfigMap was not served by every web pod within {TIMEOUT:?}"
        );
        let version = get_until(&client, web, "/version", TIMEOUT, |code, _| code == 200)?;
        in_a_row = if version == "web v2" { in_a_row + 1 } else { 0 };
        if in_a_row == 0 {
            thread::sleep(Duration::from_millis(250));
        }
    }
    eprintln!(
        "FIGURE the edited ConfigMap served by every web pod {:.1} s after the edit",
        edited.elapsed().as_secs_f64()
    );
    let after = wait_ready(&run)?;
    ensure!(
        before == after,
        "pods were recreated or restarted: {before:?} -> {after:?}"
    );
    run.finish()
}
