//! skiffctl end to end against a real API server and etcd: apply a Kubernetes manifest, read it
//! back, scale it, and delete it, as a user would.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, ensure};
use skiff_api::{
    client::ListParams,
    kinds::{Deployment, Service},
};
use skiff_testbed::{
    control::{ApiOptions, ApiServer, Etcd, etcd_available},
    workspace_binary,
};

const MANIFEST: &str = r#"# A Deployment and its Service, as written for Kubernetes.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: nginx-light:local
        ports:
        - name: http
          containerPort: 80
        resources:
          requests:
            cpu: 100m
            memory: 64Mi
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
"#;

struct Ctl<'a> {
    api: &'a ApiServer,
    home: std::path::PathBuf,
}

impl Ctl<'_> {
    /// Runs skiffctl as the admin with the server and token from the environment.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new(workspace_binary("skiffctl")?);
        cmd.args(args)
            .env("HOME", &self.home)
            .env_remove("SKIFF_CONFIG")
            .env("SKIFF_SERVER", self.api.url())
            .env("SKIFF_TOKEN", self.api.token("admin"))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting skiffctl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        ensure!(
            out.status.success(),
            "skiffctl {args:?} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        Ok(stdout.into_owned())
    }

    /// Runs and requires failure; returns stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        ensure!(
            !out.status.success(),
            "skiffctl {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn apply_get_describe_scale_and_delete_a_kubernetes_manifest() -> Result<()> {
    if !etcd_available("skiffctl_end_to_end") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let home = std::env::temp_dir().join(skiff_testbed::unique_prefix("ctl-home"));
    std::fs::create_dir_all(&home)?;
    let ctl = Ctl {
        api: &api,
        home: home.clone(),
    };
    let admin = api.client("admin").await?;

    let applied = ctl.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    assert!(applied.contains("deployment.apps/web created"), "{applied}");
    assert!(applied.contains("service/web created"), "{applied}");
    let svc: Service = admin.get("default", "web").await?;
    assert!(svc.spec.ports[0].node_port >= 30000);
    assert_eq!(svc.spec.ports[0].protocol, "TCP");
    let again = ctl.ok(&["apply", "-f", "-"], Some(MANIFEST))?;
    assert!(
        again.contains("deployment.apps/web unchanged") && again.contains("service/web unchanged"),
        "{again}"
    );
    // The manifest names neither the ClusterIP nor the NodePort nor the protocol: re-applying it
    // keeps what the server assigned and defaulted.
    let reapplied: Service = admin.get("default", "web").await?;
    assert_eq!(reapplied.spec.cluster_ip, svc.spec.cluster_ip);
    assert_eq!(
        reapplied.spec.ports[0].node_port,
        svc.spec.ports[0].node_port
    );
    assert_eq!(reapplied.spec.ports[0].protocol, "TCP");

    let table = ctl.ok(&["get", "deploy"], None)?;
    assert!(
        table.starts_with("NAME") && table.contains("web") && table.contains("0/3"),
        "{table}"
    );
    let services = ctl.ok(&["get", "svc", "web"], None)?;
    assert!(services.contains(&svc.spec.cluster_ip), "{services}");
    assert!(
        services.contains(&format!("80:{}/TCP", svc.spec.ports[0].node_port)),
        "{services}"
    );
    let yaml = ctl.ok(&["get", "deployment", "web", "-o", "yaml"], None)?;
    assert!(
        yaml.contains("kind: Deployment") && yaml.contains("replicas: 3"),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["get", "services", "-o", "json"], None)?)?;
    assert_eq!(
        json["items"][0]["spec"]["clusterIP"],
        svc.spec.cluster_ip.as_str()
    );
    let described = ctl.ok(&["describe", "deployment", "web"], None)?;
    assert!(
        described.contains("web")
            && described.contains("app=web")
            && described.contains("nginx-light:local"),
        "{described}"
    );

    let scaled = ctl.ok(&["scale", "deployment", "web", "--replicas", "5"], None)?;
    assert!(scaled.contains("deployment.apps/web scaled"), "{scaled}");
    let d: Deployment = admin.get("default", "web").await?;
    assert_eq!(d.spec.replicas, Some(5));
    assert_eq!(d.metadata.generation, 2);

    // A bad manifest is refused whole, with the server's or parser's words and a non-zero exit.
    let bad = MANIFEST.replace("replicas: 3", "replicas: -2");
    let err = ctl.fails(&["apply", "-f", "-"], Some(&bad))?;
    assert!(err.contains("spec.replicas: Invalid value: -2"), "{err}");
    let err = ctl.fails(&["get", "gizmos"], None)?;
    assert!(err.contains("gizmos"), "{err}");
    let err = ctl.fails(&["get", "deploy", "nope"], None)?;
    assert!(err.contains("deployments \"nope\" not found"), "{err}");

    let deleted = ctl.ok(&["delete", "-f", "-"], Some(MANIFEST))?;
    assert!(
        deleted.contains("deployment.apps \"web\" deleted")
            && deleted.contains("service \"web\" deleted"),
        "{deleted}"
    );
    assert!(
        admin
            .list::<Deployment>("", &ListParams::default())
            .await?
            .0
            .is_empty()
    );
    assert!(
        admin
            .list::<Service>("", &ListParams::default())
            .await?
            .0
            .is_empty()
    );
    let _ = std::fs::remove_dir_all(&home);
    Ok(())
}
