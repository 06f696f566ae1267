//! ConfigMaps and Secrets through the real API server and etcd: their life cycle, `stringData`,
//! immutability, and who may read a Secret (a viewer never; a node only for its own pods).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    Kind,
    client::{Client, ClientError, Code, DeleteParams, ListParams},
    kinds::{Bytes, ConfigMap, Secret},
};
use skiff_testbed::control::{ApiOptions, ApiServer, Etcd, etcd_available};

/// Drops the API server before etcd.
struct Cluster {
    api: ApiServer,
    _etcd: Etcd,
}

async fn cluster(test: &str) -> Result<Option<(Cluster, Client)>> {
    if !etcd_available(test) {
        return Ok(None);
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let admin = api.client("admin").await?;
    Ok(Some((Cluster { api, _etcd: etcd }, admin)))
}

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Result<ClientError> {
    match r {
        Ok(v) => bail!("expected a refusal, got {v:?}"),
        Err(e) => Ok(e),
    }
}

fn config_map(name: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = name.into();
    cm.metadata.namespace = "default".into();
    cm.data.insert("mode".into(), "prod".into());
    cm.binary_data.insert("blob".into(), Bytes(vec![0, 0xff]));
    cm
}

fn secret(name: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = name.into();
    s.metadata.namespace = "default".into();
    s.data.insert("user".into(), Bytes::from("old"));
    s.string_data.insert("user".into(), "admin".into());
    s.string_data.insert("password".into(), "hunter2".into());
    s
}

#[tokio::test]
async fn config_maps_and_secrets_are_created_read_updated_and_deleted_with_string_data_merged()
-> Result<()> {
    let Some((_c, admin)) = cluster("config_crud").await? else {
        return Ok(());
    };
    let cm = admin.create(&config_map("app")).await?;
    assert_eq!(cm.data["mode"], "prod");
    assert_eq!(cm.binary_data["blob"].0, [0, 0xff]);
    let mut cm: ConfigMap = admin.get("default", "app").await?;
    cm.data.insert("mode".into(), "dev".into());
    let cm = admin.update(&cm).await?;
    assert_eq!(cm.data["mode"], "dev");
    assert_eq!(
        admin
            .list::<ConfigMap>("default", &ListParams::default())
            .await?
            .0
            .len(),
        1
    );

    let created = admin.create(&secret("db")).await?;
    assert_eq!(created.type_, "Opaque", "the default type");
    assert!(
        created.string_data.is_empty(),
        "stringData is never returned"
    );
    assert_eq!(
        created.data["user"],
        Bytes::from("admin"),
        "stringData wins"
    );
    assert_eq!(created.data["password"], Bytes::from("hunter2"));
    let raw = admin
        .get_object(Secret::INFO, "default", "db")
        .await?
        .to_value();
    assert_eq!(
        raw["data"]["password"], "aHVudGVyMg==",
        "bytes travel as base64"
    );
    assert!(raw.get("stringData").is_none());
    let mut s: Secret = admin.get("default", "db").await?;
    s.string_data.insert("token".into(), "t".into());
    let s = admin.update(&s).await?;
    assert_eq!(
        s.data.keys().collect::<Vec<_>>(),
        ["password", "token", "user"]
    );

    // The type is fixed once created, and a typed Secret needs its keys.
    let mut retyped = s.clone();
    retyped.type_ = "kubernetes.io/basic-auth".into();
    let err = refused(admin.update(&retyped).await)?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains("type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"),
        "{err}"
    );
    let mut tls = Secret::default();
    tls.metadata.name = "tls".into();
    tls.type_ = "kubernetes.io/tls".into();
    let err = refused(admin.create(&tls).await)?;
    assert!(
        err.to_string().contains("data[tls.crt]: Required value"),
        "{err}"
    );
    assert!(
        err.to_string().contains("data[tls.key]: Required value"),
        "{err}"
    );

    admin
        .delete(ConfigMap::INFO, "default", "app", DeleteParams::default())
        .await?;
    admin
        .delete(Secret::INFO, "default", "db", DeleteParams::default())
        .await?;
    assert!(
        admin
            .get::<Secret>("default", "db")
            .await
            .err()
            .is_some_and(|e| e.is_not_found())
    );
    assert!(
        admin
            .get::<ConfigMap>("default", "app")
            .await
            .err()
            .is_some_and(|e| e.is_not_found())
    );
    Ok(())
}

#[tokio::test]
async fn immutable_config_maps_and_secrets_refuse_data_changes_with_kubernetes_text() -> Result<()>
{
    let Some((_c, admin)) = cluster("config_immutable").await? else {
        return Ok(());
    };
    let mut cm = config_map("frozen");
    cm.immutable = Some(true);
    let cm = admin.create(&cm).await?;
    let mut changed = cm.clone();
    changed.data.insert("mode".into(), "dev".into());
    let err = refused(admin.update(&changed).await)?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let mut unfrozen = cm.clone();
    unfrozen.immutable = None;
    let err = refused(admin.update(&unfrozen).await)?;
    assert!(
        err.to_string()
            .contains("immutable: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    // Metadata may still change.
    let mut labelled = cm.clone();
    labelled.metadata.labels.insert("team".into(), "a".into());
    admin.update(&labelled).await?;

    let mut s = secret("frozen");
    s.immutable = Some(true);
    let s = admin.create(&s).await?;
    let mut more = s.clone();
    more.string_data.insert("extra".into(), "x".into());
    let err = refused(admin.update(&more).await)?;
    assert!(
        err.to_string()
            .contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let stored: Secret = admin.get("default", "frozen").await?;
    assert_eq!(stored.data, s.data, "a refused write changed nothing");
    Ok(())
}

/// A pod bound to `node` (no agent runs it) that references the Secrets `regcred` (pull secret)
/// and `db` and the ConfigMap `app`.
fn pod_on(name: &str, node: &str) -> Result<skiff_api::kinds::Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{
                "name": "c",
                "image": "busybox:local",
                "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "mode"}}}
                ]
            }]
        }
    }))?)
}

#[tokio::test]
async fn viewers_never_read_secrets_and_nodes_read_only_those_of_pods_bound_to_them() -> Result<()>
{
    let Some((c, admin)) = cluster("config_authz").await? else {
        return Ok(());
    };
    admin.create(&config_map("app")).await?;
    admin.create(&secret("db")).await?;
    admin.create(&secret("regcred")).await?;
    admin.create(&secret("unrelated")).await?;

    let viewer = c.api.client("viewer").await?;
    let err = refused(viewer.get::<Secret>("default", "db").await)?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(
        err.to_string(),
        "secrets \"db\" is forbidden: User \"viewer\" cannot get secrets in the namespace \"default\""
    );
    let err = refused(
        viewer
            .list::<Secret>("default", &ListParams::default())
            .await,
    )?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    viewer.get::<ConfigMap>("default", "app").await?;

    let node_a = c.api.client("node-a").await?;
    let node_b = c.api.client("node-b").await?;
    // No pod yet: nothing relates node-a to the Secret.
    let err = refused(node_a.get::<Secret>("default", "db").await)?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(
        err.to_string(),
        "secrets \"db\" is forbidden: User \"node-a\" cannot get secrets in the namespace \"default\": no relationship found between node 'node-a' and this object"
    );
    let err = refused(
        node_a
            .list::<Secret>("default", &ListParams::default())
            .await,
    )?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = refused(node_a.list::<ConfigMap>("", &ListParams::default()).await)?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    admin.create(&pod_on("web", "node-a")?).await?;
    // At once: what the watch cache has not seen yet, the etcd fallback finds.
    let got = node_a
        .get::<Secret>("default", "db")
        .await
        .context("node-a reading the Secret its pod references, right after the pod's create")?;
    assert_eq!(got.data["password"], Bytes::from("hunter2"));
    node_a.get::<Secret>("default", "regcred").await?;
    node_a.get::<ConfigMap>("default", "app").await?;
    for (client, name) in [
        (&node_a, "unrelated"),
        (&node_b, "db"),
        (&node_b, "regcred"),
    ] {
        let err = refused(client.get::<Secret>("default", name).await)?;
        assert_eq!(err.code(), Code::PermissionDenied, "{name}: {err}");
    }
    let err = refused(node_b.get::<ConfigMap>("default", "app").await)?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // Still no listing, even with a relationship.
    let err = refused(
        node_a
            .list::<Secret>("default", &ListParams::default())
            .await,
    )?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // Once the pod is gone, so is the relationship.
    admin
        .delete(
            skiff_api::kinds::Pod::INFO,
            "default",
            "web",
            DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match node_a.get::<Secret>("default", "db").await {
            Err(e) if e.code() == Code::PermissionDenied => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => bail!("node-a still reads the Secret of a deleted pod: {other:?}"),
        }
    }
    Ok(())
}

/// Runs skiffctl as the admin; returns stdout, or fails with its stderr.
fn skiffctl(api: &ApiServer, home: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(skiff_testbed::workspace_binary("skiffctl")?)
        .args(args)
        .env("HOME", home)
        .env_remove("SKIFF_CONFIG")
        .env_remove("SKIFF_NAMESPACE")
        .env("SKIFF_SERVER", api.url())
        .env("SKIFF_TOKEN", api.token("admin"))
        .stdin(std::process::Stdio::null())
        .output()
        .context("running skiffctl")?;
    if !out.status.success() {
        bail!(
            "skiffctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn skiffctl_creates_config_maps_and_secrets_and_prints_them_as_kubectl_does() -> Result<()> {
    let Some((c, admin)) = cluster("config_skiffctl").await? else {
        return Ok(());
    };
    let home = std::env::temp_dir().join(format!("skiff-config-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let conf = home.join("app.conf");
    std::fs::write(&conf, "port=80\n")?;
    let from_file = format!("--from-file={}", conf.display());
    let result = async {
        let out = skiffctl(
            &c.api,
            &home,
            &[
                "create",
                "configmap",
                "app",
                "--from-literal=mode=prod",
                &from_file,
            ],
        )?;
        assert_eq!(out, "configmap/app created\n");
        let cm: ConfigMap = admin.get("default", "app").await?;
        assert_eq!(cm.data["app.conf"], "port=80\n");
        assert_eq!(cm.data["mode"], "prod");

        let out = skiffctl(
            &c.api,
            &home,
            &[
                "create",
                "secret",
                "generic",
                "db",
                "--from-literal=password=hunter2",
            ],
        )?;
        assert_eq!(out, "secret/db created\n");
        skiffctl(
            &c.api,
            &home,
            &[
                "create",
                "secret",
                "docker-registry",
                "regcred",
                "--docker-server=registry.local:5000",
                "--docker-username=alice",
                "--docker-password=s3cret",
            ],
        )?;
        let reg: Secret = admin.get("default", "regcred").await?;
        assert_eq!(reg.type_, "kubernetes.io/dockerconfigjson");
        let (by_type, _) = admin
            .list::<Secret>(
                "default",
                &ListParams::fields("type=kubernetes.io/dockerconfigjson"),
            )
            .await?;
        let names: Vec<&str> = by_type.iter().map(|s| s.metadata.name.as_str()).collect();
        assert_eq!(names, ["regcred"], "Secrets are selectable by type");

        let yaml = skiffctl(&c.api, &home, &["get", "secret", "db", "-o", "yaml"])?;
        assert!(yaml.contains("  password: aHVudGVyMg==\n"), "{yaml}");
        assert!(yaml.contains("type: Opaque\n"), "{yaml}");
        let table = skiffctl(&c.api, &home, &["get", "secrets"])?;
        let mut lines = table.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(header, ["NAME", "TYPE", "DATA", "AGE"], "{table}");
        let db: Vec<&str> = lines
            .find(|l| l.starts_with("db "))
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(db.get(..3), Some(&["db", "Opaque", "1"][..]), "{table}");
        let table = skiffctl(&c.api, &home, &["get", "cm"])?;
        assert!(table.starts_with("NAME "), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().take(2).eq(["app", "2"])),
            "{table}"
        );
        // A client dry run prints the object and creates nothing.
        let yaml = skiffctl(
            &c.api,
            &home,
            &[
                "create",
                "cm",
                "dry",
                "--from-literal=a=b",
                "--dry-run=client",
                "-o",
                "yaml",
            ],
        )?;
        assert!(
            yaml.contains("kind: ConfigMap\n") && yaml.contains("  a: b\n"),
            "{yaml}"
        );
        assert!(
            admin
                .get::<ConfigMap>("default", "dry")
                .await
                .err()
                .is_some_and(|e| e.is_not_found())
        );
        anyhow::Ok(())
    }
    .await;
    std::fs::remove_dir_all(&home).ok();
    result
}
