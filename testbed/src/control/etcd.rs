//! A real etcd (one or three members) on loopback with a temporary data directory and mutual
//! TLS, killed and removed on drop.

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    host::{missing_tool, runnable},
    process::{free_ports, spawn_with_pdeathsig, stop},
    unique_prefix,
};

/// Whether etcd and etcdctl are installed; under `CI=true` their absence fails the test instead.
pub fn etcd_available(test: &str) -> bool {
    let why = missing_tool(
        &["etcd", "etcdctl"],
        "cargo xtask setup installs etcd-server and etcd-client",
    );
    runnable(test, why)
}

/// The flags of one member of a new cluster (its certificates' flags come from `skiff-pki`).
#[derive(Debug, Clone, Copy)]
pub struct MemberConfig<'a> {
    /// The member's name, also its name in `initial_cluster`.
    pub name: &'a str,
    pub data_dir: &'a Path,
    /// Where it serves clients, and tells them to connect.
    pub client_url: &'a str,
    /// Where it serves its peers, and tells them to connect.
    pub peer_url: &'a str,
    /// Every member as `name=peer_url`, comma-separated.
    pub initial_cluster: &'a str,
    /// What keeps this cluster's members apart from another's.
    pub token: &'a str,
}

impl MemberConfig<'_> {
    /// `etcd`'s command line for this member, logging warnings and errors only.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--name".into(),
            self.name.to_owned(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen-client-urls".into(),
            self.client_url.to_owned(),
            "--advertise-client-urls".into(),
            self.client_url.to_owned(),
            "--listen-peer-urls".into(),
            self.peer_url.to_owned(),
            "--initial-advertise-peer-urls".into(),
            self.peer_url.to_owned(),
            "--initial-cluster".into(),
            self.initial_cluster.to_owned(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--initial-cluster-token".into(),
            self.token.to_owned(),
            "--log-level".into(),
            "warn".into(),
        ]
    }
}

/// `etcdctl` (v3 API) against `endpoints` with the API server's client certificate of `pki`.
pub fn etcdctl(pki: &skiff_pki::Files, endpoints: &[String]) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(pki.etcdctl_flags());
    cmd
}

/// Whether etcd at `endpoints` answers a health check (over mutual TLS, as the API server);
/// fails only when etcdctl cannot be run.
pub fn healthy(pki: &skiff_pki::Files, endpoints: &[String]) -> std::io::Result<bool> {
    let status = etcdctl(pki, endpoints)
        .args(["endpoint", "health", "--command-timeout=2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok(status.success())
}

/// One etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

/// An etcd cluster of one or three members, on loopback, in a temporary directory, with mutual
/// TLS on its client and peer URLs (certificates made by `skiff-pki` in `<dir>/pki`, which also
/// holds the API server's serving certificate for tests that want TLS on the API).
#[derive(Debug)]
pub struct Etcd {
    pub members: Vec<EtcdMember>,
    pub pki: skiff_pki::Files,
    dir: PathBuf,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster is healthy.
    pub fn start(n: usize) -> Result<Etcd> {
        let dir = std::env::temp_dir().join(unique_prefix("etcd"));
        // etcd's data, and the keys, are no one else's business.
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let token = unique_prefix("cluster");
        let ports = free_ports(2 * n)?;
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for i in 0..n {
            peers.push((
                format!("m{i}"),
                format!("https://127.0.0.1:{}", ports[2 * i]),
            ));
            clients.push(format!("https://127.0.0.1:{}", ports[2 * i + 1]));
        }
        let loopback = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let pki = skiff_pki::generate(
            &dir.join("pki"),
            &skiff_pki::Spec {
                etcd_members: peers
                    .iter()
                    .map(|(name, _)| skiff_pki::EtcdMember {
                        name: name.clone(),
                        hosts: loopback.clone(),
                    })
                    .collect(),
                api_hosts: loopback,
                validity: Duration::from_secs(2 * 86_400),
            },
        )
        .context("making the test cluster's certificates")?;
        let initial: Vec<String> = peers.iter().map(|(n, u)| format!("{n}={u}")).collect();
        let mut etcd = Etcd {
            members: Vec::new(),
            pki,
            dir: dir.clone(),
        };
        for (i, (name, peer)) in peers.iter().enumerate() {
            let mut args = MemberConfig {
                name,
                data_dir: &dir.join(name),
                client_url: &clients[i],
                peer_url: peer,
                initial_cluster: &initial.join(","),
                token: &token,
            }
            .args();
            args.extend(etcd.pki.etcd_flags(name));
            let log = dir.join(format!("{name}.log"));
            let child = spawn_with_pdeathsig(Path::new("etcd"), &args, &log)?;
            etcd.members.push(EtcdMember {
                name: name.clone(),
                client_url: clients[i].clone(),
                args,
                child: Some(child),
                log,
            });
        }
        let endpoints = etcd.endpoints();
        etcd.wait_healthy(&endpoints)?;
        Ok(etcd)
    }

    /// The API server's flags for this cluster: every endpoint and its client certificate.
    pub fn api_server_args(&self) -> Vec<String> {
        let mut args = vec!["--etcd".to_owned(), self.endpoints().join(",")];
        args.extend(self.pki.apiserver_etcd_flags());
        args
    }

    /// `etcdctl` with the API server's client certificate (and the v3 API).
    fn etcdctl(&self, endpoints: &[String]) -> Command {
        etcdctl(&self.pki, endpoints)
    }

    /// Client URLs of every member (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn wait_healthy(&mut self, endpoints: &[String]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for m in &mut self.members {
                if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let log = fs::read_to_string(&m.log).unwrap_or_default();
                    bail!("etcd member {} exited with {status}:\n{log}", m.name);
                }
            }
            if healthy(&self.pki, endpoints).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| fs::read_to_string(&m.log).unwrap_or_default())
                    .collect();
                bail!(
                    "etcd did not become healthy within 30 s:\n{}",
                    logs.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills member `i` outright.
    pub fn kill(&mut self, i: usize) {
        stop(&mut self.members[i].child);
    }

    /// Starts member `i` again with its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        stop(&mut m.child);
        let args: Vec<String> = m
            .args
            .iter()
            .map(|a| {
                if a == "new" {
                    "existing".to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        m.child = Some(spawn_with_pdeathsig(Path::new("etcd"), &args, &m.log)?);
        let url = m.client_url.clone();
        self.wait_healthy(&[url])
    }

    /// Runs etcdctl against the running members; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let out = self
            .etcdctl(&live)
            .args(args)
            .output()
            .context("running etcdctl")?;
        if !out.status.success() {
            bail!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The current revision of the store.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("etcdctl json")?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("etcdctl endpoint status has no header.revision")
    }

    /// Compacts history up to the current revision.
    pub fn compact(&self) -> Result<i64> {
        let rev = self.revision()?;
        self.ctl(&["compact", &rev.to_string(), "--physical"])?;
        Ok(rev)
    }

    /// Every key under a prefix.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.ctl(&["get", prefix, "--prefix", "--keys-only"])?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            stop(&mut m.child);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
