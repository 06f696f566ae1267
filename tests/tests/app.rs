//! The two-tier application of `examples/app.yaml`, unchanged, on a local cluster: nginx,
//! busybox and redis pulled from the cluster's registry, redis with its password from a Secret
//! and its configuration from a ConfigMap volume, an app finding redis through the Service
//! environment variables, nginx configured by a ConfigMap and proxying to the app. A client pod
//! reaches it all through the web Service; an edit of nginx's ConfigMap is served after a reload,
//! without a pod being recreated or restarted. The steps are `skiff_local::app`'s, the ones
//! `skiff-local demo` shows.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use skiff_local::app;
use skiff_tests::localcheck::LocalRun;

/// The manifest goes into the namespace it is written for when applied without one.
const NAMESPACE: &str = "default";
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn the_two_tier_example_runs_from_the_registry_and_serves_an_edited_configmap_after_a_reload()
-> Result<()> {
    // The agents re-read projected volumes every 2 s here (kubelet's period is a minute).
    let Some(run) = LocalRun::up("app", "ap", 2, &["--agent-arg=--volume-resync=2"])? else {
        return Ok(());
    };
    let objects = app::objects(NAMESPACE)?;
    let deployments = app::deployments(&objects)?;
    run.rt
        .block_on(app::create(&run.admin, NAMESPACE, &objects, |_| {}))?;
    let say = |m: String| eprintln!("{m}");
    let check = || Ok(());
    let before = run.rt.block_on(app::wait_ready(
        &run.admin,
        NAMESPACE,
        &deployments,
        TIMEOUT,
        &say,
        &check,
    ))?;
    let client = run.pod_netns(app::CLIENT)?;
    let web = SocketAddrV4::new(run.cluster_ip(app::FRONT)?, 80);

    // nginx -> the app's Service -> an app pod -> redis (password from the Secret): the visit
    // counter kept in redis goes up by one per request, whichever app pod answers.
    let mut visits = Vec::new();
    let mut answered_by = BTreeMap::<String, usize>::new();
    for _ in 0..8 {
        let (_, visit, _) = app::visit(&client, web, TIMEOUT)?;
        ensure!(visit.pod.starts_with("app-"), "answered by {visit:?}");
        *answered_by.entry(visit.pod.clone()).or_default() += 1;
        visits.push(visit);
    }
    ensure!(
        app::counted_once(&visits),
        "redis did not count every visit once: {visits:?}"
    );
    eprintln!(
        "answers by app pod: {answered_by:?}, visit counts {:?}",
        visits.iter().map(|v| v.count).collect::<Vec<_>>()
    );

    let (version, _) = app::get_ok(&client, web, app::VERSION_PATH, TIMEOUT)?;
    ensure!(version == app::VERSION, "{version:?}");

    // An edit of nginx's ConfigMap reaches the mounted file, nginx reloads it, and every web pod
    // serves the new version (ten answers in a row: with two web pods and a backend picked per
    // connection, both serve it, all but certainly); no pod is recreated or restarted.
    let edited = Instant::now();
    run.rt.block_on(app::edit_version(
        &run.admin,
        NAMESPACE,
        app::VERSION,
        app::EDITED_VERSION,
    ))?;
    app::wait_version(&client, web, app::EDITED_VERSION, 10, TIMEOUT, &say, &check)?;
    eprintln!(
        "FIGURE the edited ConfigMap served by every web pod {:.1} s after the edit",
        edited.elapsed().as_secs_f64()
    );
    let after = run.rt.block_on(app::wait_ready(
        &run.admin,
        NAMESPACE,
        &deployments,
        TIMEOUT,
        &say,
        &check,
    ))?;
    ensure!(
        before.identities() == after.identities(),
        "pods were recreated or restarted: {:?} -> {:?}",
        before.identities(),
        after.identities()
    );
    run.finish()
}
