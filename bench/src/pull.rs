//! The image pull benchmark (`skiff-bench pull`): a real registry (Debian's `docker-registry`)
//! on a test fabric at 10.250.0.2:5000 serving a ~100 MiB image of incompressible layers built
//! here from a seeded generator (so every run pulls the same bytes), then
//!
//! 1. cold pulls of that image (fetch + unpack into overlayfs) through the agent's own runtime
//!    code ([`Runtime::pull`], from a node namespace on the fabric, over the hosts.toml
//!    configuration a node is given) against containerd's own client (`ctr image pull
//!    --plain-http`, from the same kind of namespace) into the same containerd, the image and
//!    everything it held removed between pulls;
//! 2. pod startup to Running on a one-node cluster (real etcd, API server, containerd and
//!    `skiff-agent node --registry-config-dir`), all pods created at once with that image, cold
//!    (the image absent from the node) and warm (present, `imagePullPolicy: IfNotPresent`).

use std::{
    collections::HashSet,
    ffi::OsString,
    fs,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use skiff_agent::runtime::{Credentials, Runtime, hosts::RegistryHosts};
use skiff_api::{
    client::{Client, ListParams},
    kinds::Pod,
};
use skiff_testbed::{
    agent::{Agent, AgentOptions},
    containerd::{Containerd, busybox_image_dir, containerd_available},
    control::{ApiOptions, ApiServer, Etcd, etcd_available},
    fabric::{Fabric, NodeNs},
    netns::Netns,
    privileged,
    registry::{self, Registry, RegistryOptions},
    wait::wait_node_ready,
    workspace_binary,
};

use crate::{
    control::{Machine, machine},
    meta,
    pods::{Pace, Seen, create_all, delete_all, lock, spawn_watch, tail, wait_all},
};

/// The issue's target: a pull through the agent within 10% of containerd's own client.
pub const TARGET_RATIO: f64 = 1.10;
/// Layers of random bytes on top of busybox's layer.
pub const RANDOM_LAYERS: usize = 4;
/// Bytes of each random layer's one file.
pub const LAYER_BYTES: usize = 25 << 20;
/// The generator's seed: the same seed gives the same image digests on every run.
pub const SEED: u64 = 0x5c1f_f00d_2026_0017;
/// Where the image is pushed in the registry.
pub const REPOSITORY: &str = "bench/big";
pub const TAG: &str = "1";
const NODE: &str = "node-0";
const NAMESPACE: &str = "default";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    /// Measured pulls per path.
    pub runs: usize,
    /// Pods of each startup measurement.
    pub pods: usize,
}

impl Options {
    pub fn new(
        quick: bool,
        out: PathBuf,
        runs: Option<usize>,
        pods: Option<usize>,
    ) -> Result<Options> {
        let runs = runs.unwrap_or(if quick { 2 } else { 5 });
        let pods = pods.unwrap_or(if quick { 5 } else { 20 });
        if !(1..=50).contains(&runs) {
            bail!("--runs takes 1 to 50");
        }
        if !(1..=100).contains(&pods) {
            bail!("--pods takes 1 to 100 (they run on one node)");
        }
        Ok(Options {
            quick,
            out,
            runs,
            pods,
        })
    }
}

/// Everything a run measured; written as `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    pub started: String,
    pub finished: String,
    pub image: ImageFacts,
    /// Through `skiff_agent::runtime::Runtime::pull`.
    pub agent: Pulls,
    /// `ctr image pull --plain-http`.
    pub ctr: Pulls,
    /// agent p50 / ctr p50.
    pub ratio_p50: f64,
    /// agent min / ctr min.
    pub ratio_min: f64,
    pub target_ratio: f64,
    pub target_met: bool,
    /// The image absent from the node.
    pub cold: Startup,
    /// The image present, `imagePullPolicy: IfNotPresent`.
    pub warm: Startup,
}

/// The image pulled.
#[derive(Debug, Clone, Serialize)]
pub struct ImageFacts {
    pub reference: String,
    pub manifest_digest: String,
    pub layers: usize,
    /// Compressed bytes of config and layers (what a pull fetches).
    pub bytes: u64,
}

/// Cold pulls of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Pulls {
    pub samples_ms: Vec<f64>,
    pub p50_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Image bytes over the p50 time.
    pub p50_mib_per_s: f64,
    /// The pull's start → its first layer's unpack beginning (the first new overlayfs
    /// snapshot directory), per pull: how much of the time is fetch before any unpack.
    pub first_unpack_ms: Vec<f64>,
    pub first_unpack_p50_ms: f64,
}

/// Create call start → first watch event showing the pod Running.
#[derive(Debug, Clone, Serialize)]
pub struct Startup {
    pub pods: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// First create call → last pod Running.
    pub all_seconds: f64,
}

fn progress(what: impl std::fmt::Display) {
    eprintln!("[pull] {what}");
}

/// The `p`th percentile (nearest rank) of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn pulls(mut ms: Vec<f64>, first_unpack_ms: Vec<f64>, bytes: u64) -> Pulls {
    let samples_ms = ms.clone();
    ms.sort_by(f64::total_cmp);
    let p50 = pct(&ms, 50.0);
    let mut unpack = first_unpack_ms.clone();
    unpack.sort_by(f64::total_cmp);
    Pulls {
        samples_ms,
        p50_ms: p50,
        min_ms: ms[0],
        max_ms: ms[ms.len() - 1],
        p50_mib_per_s: bytes as f64 / (1 << 20) as f64 / (p50 / 1000.0),
        first_unpack_ms,
        first_unpack_p50_ms: pct(&unpack, 50.0),
    }
}

/// Watches containerd's overlayfs snapshot directory from its start until stopped, for the
/// moment a snapshot directory that was not there at the start appears (an unpack began).
/// A readdir every 5 ms: nothing that competes with the pull for the CPUs.
struct UnpackProbe {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Option<Duration>>,
}

impl UnpackProbe {
    fn start(ctrd: &Containerd) -> UnpackProbe {
        let dir = ctrd
            .dir()
            .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
        let names = move || -> HashSet<OsString> {
            fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let before = names();
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let handle = thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if names().iter().any(|n| !before.contains(n)) {
                        return Some(t0.elapsed());
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                None
            }
        });
        UnpackProbe { stop, handle }
    }

    /// Milliseconds from the start to the first new snapshot, if one appeared.
    fn finish(self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .ok()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The image.

/// SplitMix64: a small, fast generator whose output gzip cannot shrink; seeded, so the image's
/// digests are the same on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Writes `len` bytes of the generator seeded with `seed` to `path`.
fn write_random(path: &Path, seed: u64, len: usize) -> Result<()> {
    let mut rng = SplitMix(seed);
    let mut out = BufWriter::new(
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        let n = left.min(chunk.len());
        out.write_all(&chunk[..n])?;
        left -= n;
    }
    out.flush()?;
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sha256:<hex>` and size of a file (coreutils' `sha256sum`).
fn digest_file(path: &Path) -> Result<(String, u64)> {
    let out = run(
        Command::new("sha256sum").arg(path),
        &format!("hashing {}", path.display()),
    )?;
    let hex = out
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .with_context(|| format!("sha256sum printed {out:?}"))?;
    Ok((format!("sha256:{hex}"), fs::metadata(path)?.len()))
}

/// Moves `file` into the layout's blob store; returns its digest and size.
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let (digest, size) = digest_file(file)?;
    let to = blobs.join(digest.trim_start_matches("sha256:"));
    fs::rename(file, &to).with_context(|| format!("moving {} into the layout", file.display()))?;
    Ok((digest, size))
}

fn add_json(blobs: &Path, work: &Path, name: &str, v: &serde_json::Value) -> Result<(String, u64)> {
    let file = work.join(name);
    fs::write(&file, serde_json::to_vec(v)?)?;
    add_blob(blobs, &file)
}

fn read_blob(blobs: &Path, digest: &str) -> Result<serde_json::Value> {
    let path = blobs.join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// Builds the benchmark image as an OCI layout in `work/layout` (tag [`TAG`]): busybox's layer
/// and config (so its pods can `sleep`), then [`RANDOM_LAYERS`] layers each holding one file of
/// [`LAYER_BYTES`] random bytes. Deterministic: GNU tar with fixed names, times and owners, gzip
/// without name or time. Returns the layout's path and facts about the image.
pub fn build_image(work: &Path) -> Result<(PathBuf, String, u64)> {
    let busybox = work.join("busybox");
    fs::create_dir_all(&busybox)?;
    let archive = busybox_image_dir()?.join("busybox.tar");
    run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&busybox),
        "unpacking the busybox archive",
    )?;
    let bb_blobs = busybox.join("blobs/sha256");
    let index = read_blob(&busybox, "index.json")?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("the busybox index names no manifest")?;
    let manifest = read_blob(&bb_blobs, manifest_digest)?;
    let mut config = read_blob(
        &bb_blobs,
        manifest["config"]["digest"]
            .as_str()
            .context("the busybox manifest has no config")?,
    )?;
    let bb_layer = manifest["layers"][0].clone();

    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let bb_layer_digest = bb_layer["digest"]
        .as_str()
        .context("the busybox layer has no digest")?;
    let hex = bb_layer_digest.trim_start_matches("sha256:");
    fs::rename(bb_blobs.join(hex), blobs.join(hex))?;
    let mut layers = vec![bb_layer];
    let mut bytes = layers[0]["size"].as_u64().unwrap_or(0);
    for i in 0..RANDOM_LAYERS {
        let root = work.join(format!("l{i}"));
        fs::create_dir_all(root.join("data"))?;
        write_random(
            &root.join(format!("data/random-{i}")),
            SEED.wrapping_add(i as u64),
            LAYER_BYTES,
        )?;
        let tar = work.join(format!("l{i}.tar"));
        run(
            Command::new("tar")
                .args([
                    "--format=gnu",
                    "--sort=name",
                    "--mtime=@0",
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                ])
                .env("LC_ALL", "C")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("data"),
            "packing a random layer",
        )?;
        fs::remove_dir_all(&root)?;
        let (diff_id, _) = digest_file(&tar)?;
        let gz = work.join(format!("l{i}.tar.gz"));
        let status = Command::new("gzip")
            .args(["-n", "-1", "-c"])
            .arg(&tar)
            .stdout(fs::File::create(&gz)?)
            .status()
            .context("running gzip")?;
        if !status.success() {
            bail!("gzip failed with {status}");
        }
        fs::remove_file(&tar)?;
        let (digest, size) = add_blob(&blobs, &gz)?;
        bytes += size;
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size,
        }));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .context("the busybox config has no diff_ids")?
            .push(diff_id.into());
        if let Some(h) = config["history"].as_array_mut() {
            h.push(
                serde_json::json!({"created_by": format!("skiff-bench pull: random layer {i}")}),
            );
        }
    }
    let (config_digest, config_size) = add_json(&blobs, work, "config.json", &config)?;
    bytes += config_size;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    });
    let (manifest_digest, manifest_size) = add_json(&blobs, work, "manifest.json", &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": TAG},
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    fs::remove_dir_all(&busybox)?;
    Ok((layout, manifest_digest, bytes))
}

// ---------------------------------------------------------------------------------------------
// Pulls.

/// `ctr -a <socket> -n <namespace> ARGS` inside the namespace `netns`.
fn ctr(netns: &Netns, ctrd: &Containerd, namespace: &str, args: &[&str]) -> Result<String> {
    run(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args(["--", "ctr", "-a"])
            .arg(ctrd.socket())
            .args(["-n", namespace])
            .args(args),
        &format!("ctr {}", args.join(" ")),
    )
}

/// Content blobs and overlayfs snapshots containerd holds in `namespace`.
fn held(netns: &Netns, ctrd: &Containerd, namespace: &str) -> Result<(usize, usize)> {
    let content = ctr(netns, ctrd, namespace, &["content", "ls", "-q"])?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    // `snapshots ls` prints a header line.
    let snapshots = ctr(netns, ctrd, namespace, &["snapshots", "ls"])?
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    Ok((content, snapshots))
}

/// Runs `f` on a tokio runtime of its own on a thread inside `netns` (sockets it opens are
/// the namespace's; the runtime's worker threads inherit it).
fn in_netns<T: Send>(
    netns: &Netns,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>> + Send,
) -> Result<T> {
    netns.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("a tokio runtime")?
            .block_on(f())
    })
}

/// Removes `reference` from `namespace` (the image record; containerd's collector, run
/// synchronously, frees its content and snapshots) and checks that nothing is left, so the
/// next pull fetches and unpacks everything.
fn make_cold(netns: &Netns, ctrd: &Containerd, namespace: &str, reference: &str) -> Result<()> {
    let socket = ctrd.socket().to_path_buf();
    let (ns, name) = (namespace.to_owned(), reference.to_owned());
    in_netns(netns, move || {
        Box::pin(async move {
            let rt = Runtime::connect(&socket, &ns).await?;
            if rt.image(&name).await?.is_some() {
                rt.remove_image(&name).await?;
            }
            Ok(())
        })
    })?;
    let (content, snapshots) = held(netns, ctrd, namespace)?;
    if content != 0 || snapshots != 0 {
        bail!(
            "after removing {reference}, containerd still holds {content} blobs and {snapshots} \
             snapshots in {namespace}: the next pull would not be cold"
        );
    }
    Ok(())
}

/// Checks that the pull left every layer unpacked: one snapshot per layer.
fn check_unpacked(
    netns: &Netns,
    ctrd: &Containerd,
    namespace: &str,
    path: &str,
    layers: usize,
) -> Result<()> {
    let (content, snapshots) = held(netns, ctrd, namespace)?;
    if snapshots != layers {
        bail!(
            "{path}: {snapshots} snapshots after the pull, {layers} layers: not every layer was unpacked"
        );
    }
    // Index or manifest, config, layers.
    if content < layers + 2 {
        bail!(
            "{path}: {content} blobs after the pull, expected at least {}",
            layers + 2
        );
    }
    Ok(())
}

fn pull_agent(
    netns: &Netns,
    ctrd: &Containerd,
    namespace: &str,
    hosts: &Path,
    reference: &str,
) -> Result<f64> {
    let socket = ctrd.socket().to_path_buf();
    let (ns, name, hosts) = (namespace.to_owned(), reference.to_owned(), hosts.to_owned());
    in_netns(netns, move || {
        Box::pin(async move {
            let hosts = RegistryHosts::load(&hosts)?;
            let rt = Runtime::connect(&socket, &ns)
                .await?
                .with_registry_hosts(hosts);
            let t = Instant::now();
            rt.pull(&name, &Credentials::none()).await?;
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        })
    })
}

fn pull_ctr(netns: &Netns, ctrd: &Containerd, namespace: &str, reference: &str) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .args(["--", "ctr", "-a"])
        .arg(ctrd.socket())
        .args(["-n", namespace, "images", "pull", "--plain-http", reference])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running ctr images pull")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "ctr images pull {reference} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

/// The pull comparison: one unmeasured pull per path, then `runs` cold pulls per path,
/// alternating which path goes first.
fn pull_phase(
    opts: &Options,
    node: &NodeNs,
    ctrd: &Containerd,
    hosts: &Path,
    image: &ImageFacts,
) -> Result<(Pulls, Pulls)> {
    let namespace = format!("{}-pull", ctrd.namespace());
    let reference = &image.reference;
    let layers = image.layers;
    let (mut agent, mut ctr_ms) = (Vec::new(), Vec::new());
    let (mut agent_unpack, mut ctr_unpack) = (Vec::new(), Vec::new());
    for run in 0..=opts.runs {
        let agent_first = run % 2 == 0;
        for first in [true, false] {
            let is_agent = first == agent_first;
            let path = if is_agent { "agent" } else { "ctr" };
            make_cold(&node.ns, ctrd, &namespace, reference)?;
            let probe = UnpackProbe::start(ctrd);
            let ms = if is_agent {
                pull_agent(&node.ns, ctrd, &namespace, hosts, reference)
            } else {
                pull_ctr(&node.ns, ctrd, &namespace, reference)
            };
            let unpack = probe.finish();
            let ms = ms?;
            let unpack = unpack.with_context(|| {
                format!("{path}: no snapshot appeared under containerd's overlayfs directory")
            })?;
            check_unpacked(&node.ns, ctrd, &namespace, path, layers)?;
            if run == 0 {
                progress(format!(
                    "  warm-up pull through {path}: {ms:.0} ms (first unpack at {unpack:.0} ms)"
                ));
                continue;
            }
            progress(format!(
                "  run {run}/{}: {path} {ms:.0} ms (first unpack at {unpack:.0} ms)",
                opts.runs
            ));
            if is_agent {
                agent.push(ms);
                agent_unpack.push(unpack);
            } else {
                ctr_ms.push(ms);
                ctr_unpack.push(unpack);
            }
        }
    }
    make_cold(&node.ns, ctrd, &namespace, reference)?;
    Ok((
        pulls(agent, agent_unpack, image.bytes),
        pulls(ctr_ms, ctr_unpack, image.bytes),
    ))
}

// ---------------------------------------------------------------------------------------------
// Pod startup.

fn pod(name: &str, image: &str) -> (String, serde_json::Value) {
    let json = serde_json::json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
            }],
        }
    });
    (name.to_owned(), json)
}

/// Creates `n` pods at once (every create call in flight together), waits until all are
/// Running, deletes them and waits until they are gone.
async fn startup(
    admin: &Client,
    agent: &Agent,
    seen: &Mutex<Seen>,
    prefix: &str,
    n: usize,
    image: &str,
) -> Result<Startup> {
    let first = Instant::now();
    let pods = (0..n)
        .map(|i| pod(&format!("{prefix}-{i}"), image))
        .collect();
    let started = create_all(admin, pods, Pace::Together).await?;
    wait_all(agent, seen, &started, "Running", false).await?;
    let (mut ms, last) = {
        let s = lock(seen);
        let ms: Vec<f64> = started
            .iter()
            .map(|(name, t)| s.running[name].saturating_duration_since(*t).as_secs_f64() * 1000.0)
            .collect();
        let last = started.keys().map(|n| s.running[n]).max().unwrap_or(first);
        (ms, last)
    };
    ms.sort_by(f64::total_cmp);
    let r = Startup {
        pods: n,
        p50_ms: pct(&ms, 50.0),
        p99_ms: pct(&ms, 99.0),
        max_ms: pct(&ms, 100.0),
        all_seconds: last.saturating_duration_since(first).as_secs_f64(),
    };
    progress(format!(
        "  p50 {:.0} ms, p99 {:.0} ms, all Running after {:.2} s; deleting",
        r.p50_ms, r.p99_ms, r.all_seconds
    ));
    let names: Vec<String> = started.into_keys().collect();
    delete_all(admin, agent, &names).await?;
    Ok(r)
}

/// The startup phase: etcd, the API server and an agent on `node` pulling through `hosts`;
/// `pods` pods cold, then warm.
async fn pods_phase(
    opts: &Options,
    node: &NodeNs,
    ctrd: &Containerd,
    hosts: &Path,
    empty_images: &Path,
    reference: &str,
) -> Result<(Startup, Startup)> {
    progress("starting etcd, the API server and the agent");
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            nodes: 1,
            ..ApiOptions::default()
        },
    )?;
    let admin = api.client("admin").await?;
    let node_namespace = format!("{}-node-0", ctrd.namespace());
    let agent = Agent::start(
        &api,
        node,
        &AgentOptions {
            index: 0,
            containerd: ctrd.socket().to_path_buf(),
            // No image archives: every image comes from the registry.
            image_dir: empty_images.to_path_buf(),
            containerd_namespace: node_namespace.clone(),
            cgroup_parent: ctrd.cgroup_parent().to_owned(),
            extra: vec!["--registry-config-dir".into(), hosts.display().to_string()],
        },
    )?;
    if let Err(e) = wait_node_ready(&admin, NODE, Duration::from_secs(30)).await {
        bail!("{e}\nagent log:\n{}", tail(&agent.log()));
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watch = spawn_watch(admin.clone(), seen.clone());
    let result = async {
        // The node's image absent, and nothing of it left in containerd.
        make_cold(&node.ns, ctrd, &node_namespace, reference)?;
        progress(format!(
            "{} pods created at once, image absent from the node (cold)",
            opts.pods
        ));
        let cold = startup(&admin, &agent, &seen, "cold", opts.pods, reference).await?;
        progress(format!(
            "{} pods created at once, image present (warm)",
            opts.pods
        ));
        let warm = startup(&admin, &agent, &seen, "warm", opts.pods, reference).await?;
        anyhow::Ok((cold, warm))
    }
    .await;
    if result.is_err() {
        let (pods, _) = admin
            .list::<Pod>(NAMESPACE, &ListParams::default())
            .await
            .unwrap_or_default();
        let names: Vec<String> = pods.into_iter().map(|p| p.metadata.name).collect();
        if let Err(e) = delete_all(&admin, &agent, &names).await {
            progress(format!("cleanup: {e:#}"));
        }
    }
    watch.abort();
    drop(agent);
    drop(api);
    drop(etcd);
    result
}

// ---------------------------------------------------------------------------------------------

/// Removes a directory however the run ends.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cleanup: removing {}: {e}", self.0.display());
        }
    }
}

pub fn main(opts: &Options) -> Result<()> {
    let test = "skiff-bench pull";
    if !privileged(test) || !etcd_available(test) || !containerd_available(test) {
        bail!("this host cannot run the pull benchmark (see above); run `cargo xtask setup`");
    }
    if let Some(why) = registry::missing_tools(false) {
        bail!("{why}");
    }
    for bin in ["skiff-apiserver", "skiff-agent"] {
        workspace_binary(bin).with_context(|| {
            format!("{bin} must be next to skiff-bench or in $SKIFF_BIN_DIR (cargo build --release -p {bin})")
        })?;
    }
    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let started = meta::now_utc();
    let work = Dir(std::env::temp_dir().join(format!("skiff-bench-pull-{}", std::process::id())));
    fs::create_dir_all(&work.0)?;

    progress(format!(
        "building the image: busybox + {RANDOM_LAYERS} layers of {} MiB of random bytes",
        LAYER_BYTES >> 20
    ));
    let built = build_image(&work.0.join("image"))?;
    let (layout, manifest_digest, bytes) = built;

    progress("starting containerd, the fabric and the registry");
    let ctrd = Containerd::start().context("starting containerd")?;
    let prefix = format!("bl{}", std::process::id() % 100_000);
    let fabric = Fabric::new(&prefix)?;
    let node = fabric.node(0)?;
    let reg = Registry::start(&format!("{prefix}-fab"), RegistryOptions::default())?;
    let hosts = work.0.join("hosts.d");
    registry::write_hosts_dir(&hosts, &reg.host())?;
    let empty_images = work.0.join("no-images");
    fs::create_dir_all(&empty_images)?;
    let dest = format!("{REPOSITORY}:{TAG}");
    let t = Instant::now();
    reg.push(&format!("oci:{}:{TAG}", layout.display()), &dest)?;
    progress(format!(
        "pushed {dest} ({:.1} MiB) in {:.1} s",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    ));
    fs::remove_dir_all(&layout)?;
    let image = ImageFacts {
        reference: format!("{}/{dest}", reg.host()),
        manifest_digest,
        layers: RANDOM_LAYERS + 1,
        bytes,
    };

    progress(format!(
        "{} cold pulls of {} per path (agent runtime, ctr), after one unmeasured each",
        opts.runs, image.reference
    ));
    let (agent, ctr) = pull_phase(opts, &node, &ctrd, &hosts, &image)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (cold, warm) = rt.block_on(pods_phase(
        opts,
        &node,
        &ctrd,
        &hosts,
        &empty_images,
        &image.reference,
    ))?;
    drop(rt);
    drop(reg);
    drop(node);
    drop(fabric);
    drop(ctrd);

    let ratio_p50 = agent.p50_ms / ctr.p50_ms;
    let results = Results {
        machine: machine(),
        quick: opts.quick,
        started,
        finished: meta::now_utc(),
        image,
        ratio_min: agent.min_ms / ctr.min_ms,
        agent,
        ctr,
        ratio_p50,
        target_ratio: TARGET_RATIO,
        target_met: ratio_p50 <= TARGET_RATIO,
        cold,
        warm,
    };
    crate::report::write_results(&opts.out, &results, &report(&results), &summary(&results))?;
    Ok(())
}

fn verdict(r: &Results) -> &'static str {
    if r.target_met { "met" } else { "MISSED" }
}

/// The figures as a plain table.
pub fn summary(r: &Results) -> String {
    let p = |x: &Pulls, what: &str| {
        format!(
            "{what:<28} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>13.0}\n",
            x.samples_ms.len(),
            x.p50_ms,
            x.min_ms,
            x.max_ms,
            x.p50_mib_per_s,
            x.first_unpack_p50_ms
        )
    };
    let s = |x: &Startup, what: &str| {
        format!(
            "{what:<28} {:>5} {:>8.0} {:>8.0} {:>8.0} {:>7.2}\n",
            x.pods, x.p50_ms, x.p99_ms, x.max_ms, x.all_seconds
        )
    };
    format!(
        "image {} ({:.1} MiB in {} layers)\n\
         {:<28} {:>5} {:>8} {:>8} {:>8} {:>8} {:>13}\n{}{}\
         agent/ctr: p50 {:.2}, min {:.2} — target ≤ {:.2}: {}\n\n\
         {:<28} {:>5} {:>8} {:>8} {:>8} {:>7}\n{}{}",
        r.image.reference,
        r.image.bytes as f64 / (1 << 20) as f64,
        r.image.layers,
        "cold pull (fetch + unpack)",
        "runs",
        "p50 ms",
        "min ms",
        "max ms",
        "MiB/s",
        "1st unpack ms",
        p(&r.agent, "agent (Runtime::pull)"),
        p(&r.ctr, "ctr image pull"),
        r.ratio_p50,
        r.ratio_min,
        r.target_ratio,
        verdict(r),
        "create → Running",
        "pods",
        "p50 ms",
        "p99 ms",
        "max ms",
        "all s",
        s(&r.cold, "cold (image absent)"),
        s(&r.warm, "warm (IfNotPresent)"),
    )
}

fn report(r: &Results) -> String {
    let p = |x: &Pulls, what: &str| {
        format!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            x.samples_ms.len(),
            x.p50_ms,
            x.min_ms,
            x.max_ms,
            x.p50_mib_per_s,
            x.first_unpack_p50_ms
        )
    };
    let s = |x: &Startup, what: &str| {
        format!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} | {:.2} |\n",
            x.pods, x.p50_ms, x.p99_ms, x.max_ms, x.all_seconds
        )
    };
    format!(
        "# Image pulls and pod startup from a registry{}\n\n\
         {} ({} CPUs, {:.1} GiB), kernel {}; run {} → {}.\n\n\
         A registry (Debian's `docker-registry`, plain HTTP) in a namespace on the test fabric \
         serves `{}` ({:.1} MiB compressed, {} layers: busybox's and {} of {} MiB of seeded random \
         bytes, so gzip cannot shrink them; manifest `{}`). Pulls run from a node namespace on \
         the fabric into one containerd, in one containerd namespace; before every pull the \
         image is removed and containerd's collector, run synchronously, frees its blobs and \
         snapshots (checked: none left), so every pull fetches and unpacks everything (checked: \
         one snapshot per layer after it). The agent's path is `Runtime::pull` over the same \
         hosts.toml directory a node gets; the other is containerd's own client, `ctr image \
         pull --plain-http`, a new process each time (its start is in its time). One unmeasured \
         pull per path first; the paths alternate which goes first. First unpack: the pull's \
         start → the first new directory in containerd's overlayfs snapshot store (the first \
         layer's unpack beginning), polled every 5 ms; p50.\n\n\
         | cold pull (fetch + unpack) | runs | p50 ms | min ms | max ms | MiB/s at p50 | first unpack at, ms |\n\
         |---|---|---|---|---|---|---|\n{}{}\n\
         **agent / ctr: p50 {:.2}, min {:.2} — target ≤ {:.2} (within 10%): {}**\n\n\
         ## Pod startup with the image from the registry\n\n\
         One node (etcd, the API server, containerd and `skiff-agent node --registry-config-dir`, \
         no image archives imported). The pods, bound to node-0, are created all at once (every \
         create call in flight together); each latency is the pod's create call start → the first \
         watch event showing it Running. Cold: the image absent from the node (one pull serves \
         every pod); warm: present, `imagePullPolicy: IfNotPresent`.\n\n\
         | create → Running | pods | p50 ms | p99 ms | max ms | all Running in s |\n\
         |---|---|---|---|---|---|\n{}{}",
        if r.quick { " (quick)" } else { "" },
        r.machine.cpu_model,
        r.machine.cpus,
        r.machine.memory_gib,
        r.machine.kernel,
        r.started,
        r.finished,
        r.image.reference,
        r.image.bytes as f64 / (1 << 20) as f64,
        r.image.layers,
        RANDOM_LAYERS,
        LAYER_BYTES >> 20,
        r.image.manifest_digest,
        p(&r.agent, "agent (`Runtime::pull`)"),
        p(&r.ctr, "`ctr image pull`"),
        r.ratio_p50,
        r.ratio_min,
        r.target_ratio,
        verdict(r),
        s(&r.cold, "cold (image absent)"),
        s(&r.warm, "warm (image present)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_layers_are_the_same_for_a_seed_and_differ_between_seeds() {
        let words = |seed| {
            let mut r = SplitMix(seed);
            (0..4).map(|_| r.next()).collect::<Vec<u64>>()
        };
        assert_eq!(words(SEED), words(SEED));
        assert_ne!(words(SEED), words(SEED + 1));
    }

    #[test]
    fn random_layer_bytes_do_not_compress() {
        let dir =
            std::env::temp_dir().join(format!("skiff-bench-pull-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw");
        write_random(&raw, SEED, 1 << 20).unwrap();
        assert_eq!(fs::metadata(&raw).unwrap().len(), 1 << 20);
        let gz = Command::new("gzip")
            .args(["-n", "-1", "-c"])
            .arg(&raw)
            .output()
            .unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            gz.stdout.len() as f64 > 0.99 * (1 << 20) as f64,
            "gzip shrank 1 MiB of random bytes to {}",
            gz.stdout.len()
        );
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 10.0);
        assert_eq!(pct(&v, 99.0), 20.0);
        assert_eq!(pct(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn quick_mode_pulls_twice_and_starts_five_pods() {
        let q = Options::new(true, PathBuf::from("x"), None, None).unwrap();
        assert_eq!((q.runs, q.pods), (2, 5));
        let f = Options::new(false, PathBuf::from("x"), None, None).unwrap();
        assert_eq!((f.runs, f.pods), (5, 20));
        assert!(Options::new(false, PathBuf::from("x"), Some(0), None).is_err());
    }
}
