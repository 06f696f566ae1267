//! A running cluster seen by a blocking test: an admin client with a runtime of its own, and the
//! calls end-to-end tests make over and over (apply a manifest, list pods, look up a Service's
//! cluster IP, edit an object despite conflicts, wait for a pod or a condition). Whichever way
//! the cluster was started ([`crate::nodes::Nodes`], `skiff-local`), the test drives it the same
//! way.
//!
//! The calls block: use it from a plain test thread, not from inside an async runtime.

use std::{
    future::Future,
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    client::{Client, ClientConfig, ListParams},
    kinds::{Endpoints, Pod, Service},
    manifest,
    object::Kind,
};

/// The namespace the helpers below work in.
pub const NAMESPACE: &str = "default";

/// An admin client of a running cluster and the runtime its calls block on. The client is
/// declared first so it is dropped before the runtime.
#[derive(Debug)]
pub struct Admin {
    pub admin: Client,
    pub rt: tokio::runtime::Runtime,
}

impl Admin {
    /// Connects with `config` on a new single-threaded runtime.
    pub fn connect(config: &ClientConfig) -> Result<Admin> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime for the admin client")?;
        let admin = rt
            .block_on(Client::connect(config))
            .context("connecting to the API server as admin")?;
        Ok(Admin { admin, rt })
    }

    /// An admin client made by `connect` (which runs on the new runtime).
    pub fn with<F, Fut>(connect: F) -> Result<Admin>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Client>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime for the admin client")?;
        let admin = rt.block_on(connect())?;
        Ok(Admin { admin, rt })
    }

    /// Creates every object of a YAML manifest (documents separated by `---`), in order.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        for o in manifest::parse(yaml.as_bytes())? {
            self.rt
                .block_on(self.admin.create_object(&o))
                .with_context(|| format!("creating {} {}", o.info().kind, o.meta().name))?;
        }
        Ok(())
    }

    /// The pods of [`NAMESPACE`] that match a label selector (`app=web`).
    pub fn pods(&self, selector: &str) -> Result<Vec<Pod>> {
        Ok(self
            .rt
            .block_on(
                self.admin
                    .list::<Pod>(NAMESPACE, &ListParams::labels(selector)),
            )?
            .0)
    }

    /// Object `name` of kind `K` in `namespace`, or `None` when there is none.
    pub fn find<K: Kind>(&self, namespace: &str, name: &str) -> Result<Option<K>> {
        match self.rt.block_on(self.admin.get::<K>(namespace, name)) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The Endpoints of Service `name` in [`NAMESPACE`], once the controller made them.
    pub fn endpoints(&self, name: &str) -> Result<Option<Endpoints>> {
        self.find(NAMESPACE, name)
    }

    /// The cluster IP of Service `service` in [`NAMESPACE`].
    pub fn cluster_ip(&self, service: &str) -> Result<Ipv4Addr> {
        let s = self
            .rt
            .block_on(self.admin.get::<Service>(NAMESPACE, service))?;
        s.spec
            .cluster_ip
            .parse()
            .with_context(|| format!("Service {service} has cluster IP {:?}", s.spec.cluster_ip))
    }

    /// Reads object `name` of kind `K`, changes it and writes it back, reading it again when
    /// the write conflicts with another writer (up to ten times).
    pub fn edit<K: Kind>(
        &self,
        namespace: &str,
        name: &str,
        change: impl Fn(&mut K),
    ) -> Result<()> {
        for _ in 0..10 {
            let mut o = self.rt.block_on(self.admin.get::<K>(namespace, name))?;
            change(&mut o);
            match self.rt.block_on(self.admin.update(&o)) {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("updating {} {name} kept conflicting", K::INFO.kind)
    }

    /// Waits until pod `name` of [`NAMESPACE`] is Running, and returns it.
    pub fn wait_pod_running(&self, name: &str, timeout: Duration) -> Result<Pod> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.rt.block_on(self.admin.get::<Pod>(NAMESPACE, name))?;
            if p.status.phase == "Running" {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                bail!(
                    "pod {name} was not Running within {timeout:?}: {:?}",
                    p.status
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}
