//! Encryption at rest (`--encryption-provider-config`) against a real etcd: Secrets and
//! ConfigMaps are stored as `k8s:enc:aesgcm:v1:<key>:` ciphertext, read back through the API
//! (gets, lists, watches), rotated to a new key by rewriting, and decrypted again with
//! `identity` first.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use skiff_api::{
    Kind,
    client::{Client, ListParams, WatchEvent},
    kinds::{Bytes, ConfigMap, Pod, Secret},
};
use skiff_testbed::{
    control::{
        ApiOptions, ApiServer, Encryption, Etcd, aesgcm_config, etcd_available, etcdctl, random_key,
    },
    workspace_binary,
};
use tokio_stream::StreamExt;

/// The Secret's value; stored base64-encoded in the object's JSON.
const PASSWORD: &str = "correct-horse-battery-staple";
const PASSWORD_B64: &str = "Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ==";
const SETTING: &str = "log-level-is-very-verbose";

fn secret(name: &str) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = name.into();
    s.metadata.namespace = "default".into();
    s.data = BTreeMap::from([("db-password".into(), Bytes(PASSWORD.as_bytes().to_vec()))]);
    s
}

fn config_map(name: &str) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = name.into();
    c.metadata.namespace = "default".into();
    c.data = BTreeMap::from([("settings".into(), SETTING.into())]);
    c
}

fn pod(name: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = name.into();
    p.metadata.namespace = "default".into();
    p.spec.containers.push(skiff_api::kinds::Container {
        name: "c".into(),
        image: "busybox:local".into(),
        ..Default::default()
    });
    p
}

/// The value etcd holds at `key`, exactly as stored.
fn raw(etcd: &Etcd, key: &str) -> Result<Vec<u8>> {
    let out = etcdctl(&etcd.pki, &etcd.endpoints())
        .args(["get", key, "--print-value-only"])
        .output()
        .context("running etcdctl")?;
    if !out.status.success() {
        bail!(
            "etcdctl get {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut v = out.stdout;
    if v.last() == Some(&b'\n') {
        v.pop();
    }
    if v.is_empty() {
        bail!("etcd has no value at {key}");
    }
    Ok(v)
}

/// Writes `value` at `key` straight into etcd (binary-safe, through stdin).
fn put_raw(etcd: &Etcd, key: &str, value: &[u8]) -> Result<()> {
    let mut child = etcdctl(&etcd.pki, &etcd.endpoints())
        .args(["put", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running etcdctl")?;
    child.stdin.take().context("stdin")?.write_all(value)?;
    if !child.wait()?.success() {
        bail!("etcdctl put {key} failed");
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Asserts that the value at `key` is aesgcm ciphertext of key `name`, with none of `plain`.
fn assert_encrypted(etcd: &Etcd, key: &str, name: &str, plain: &[&str]) -> Result<()> {
    let v = raw(etcd, key)?;
    let prefix = format!("k8s:enc:aesgcm:v1:{name}:");
    assert!(
        v.starts_with(prefix.as_bytes()),
        "{key} should start with {prefix}: {}",
        String::from_utf8_lossy(&v[..v.len().min(40)])
    );
    for p in plain {
        assert!(!contains(&v, p), "{key} holds {p:?} in clear");
    }
    Ok(())
}

/// Runs skiffctl as the admin; returns stdout.
fn skiffctl(api: &ApiServer, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new(workspace_binary("skiffctl")?)
        .args(args)
        .env_remove("SKIFF_CONFIG")
        .env("SKIFF_SERVER", api.url())
        .env("SKIFF_TOKEN", api.token("admin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting skiffctl (cargo build --bins -p skiff-ctl)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.unwrap_or_default().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "skiffctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn secrets_config(keys: &[(&str, &str)]) -> String {
    aesgcm_config(&["secrets", "configmaps"], keys, false)
}

async fn start(test: &str, yaml: String) -> Result<Option<(Etcd, ApiServer, Client)>> {
    if !etcd_available(test) {
        return Ok(None);
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(
        &etcd,
        &ApiOptions {
            encryption: Encryption::Config(yaml),
            ..Default::default()
        },
    )?;
    let admin = api.client("admin").await?;
    Ok(Some((etcd, api, admin)))
}

#[tokio::test]
async fn secrets_are_ciphertext_in_etcd_read_back_everywhere_and_rotate_by_rewriting() -> Result<()>
{
    let (key1, key2) = (random_key()?, random_key()?);
    let Some((etcd, mut api, admin)) =
        start("encryption_rotation", secrets_config(&[("key1", &key1)])).await?
    else {
        return Ok(());
    };
    let created = admin.create(&secret("db")).await?;
    admin.create(&secret("other")).await?;
    admin.create(&config_map("app")).await?;
    admin.create(&pod("web")).await?;
    let secret_key = "/registry/secrets/default/db";
    let cm_key = "/registry/configmaps/default/app";
    assert_encrypted(
        &etcd,
        secret_key,
        "key1",
        &[PASSWORD, PASSWORD_B64, "db-password"],
    )?;
    assert_encrypted(&etcd, cm_key, "key1", &[SETTING, "settings"])?;
    // Pods are not in the configuration: plain JSON.
    let pod_value = raw(&etcd, "/registry/pods/default/web")?;
    assert!(pod_value.starts_with(b"{"), "pods stay JSON");

    // Read back through the API: get and list decrypt.
    let got: Secret = admin.get("default", "db").await?;
    assert_eq!(got.data, secret("db").data);
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let (listed, _) = admin
        .list::<Secret>("default", &ListParams::default())
        .await?;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].data, secret("db").data);
    let cm: ConfigMap = admin.get("default", "app").await?;
    assert_eq!(cm.data.get("settings").map(String::as_str), Some(SETTING));

    // A value copied under another key does not decrypt (the key is authenticated), and it
    // does not hide the readable Secrets from a list.
    put_raw(
        &etcd,
        "/registry/secrets/default/copy",
        &raw(&etcd, secret_key)?,
    )?;
    let err = admin
        .get::<Secret>("default", "copy")
        .await
        .expect_err("a moved value must not decrypt");
    assert!(
        err.to_string().contains("could not decrypt"),
        "unexpected error: {err}"
    );
    let (listed, _) = admin
        .list::<Secret>("default", &ListParams::default())
        .await?;
    assert_eq!(
        listed
            .iter()
            .map(|s| s.metadata.name.as_str())
            .collect::<Vec<_>>(),
        ["db", "other"]
    );
    etcd.ctl(&["del", "/registry/secrets/default/copy"])?;

    // Rotation, step 1: the new key first, the old one still listed; restart.
    api.restart_with_encryption(&secrets_config(&[("key2", &key2), ("key1", &key1)]))?;
    let admin = api.client("admin").await?;
    let (_, from) = admin
        .list::<Secret>("default", &ListParams::default())
        .await?;
    let mut watch = admin
        .watch(Secret::INFO, "default", &ListParams::default(), from, false)
        .await?;
    let before: Secret = admin.get("default", "db").await?;
    assert_eq!(before.data, secret("db").data, "the old key still reads");
    assert_encrypted(&etcd, secret_key, "key1", &[])?;
    // Step 2: rewrite every object unchanged (`get | replace`); the update is not skipped as a
    // no-op, because the value was read with a key that is no longer the first.
    let rewritten = admin.update(&before).await?;
    assert_ne!(
        rewritten.metadata.resource_version, before.metadata.resource_version,
        "a value read with an old key is rewritten"
    );
    assert_encrypted(&etcd, secret_key, "key2", &[PASSWORD, PASSWORD_B64])?;
    let cm: ConfigMap = admin.get("default", "app").await?;
    admin.update(&cm).await?;
    assert_encrypted(&etcd, cm_key, "key2", &[SETTING])?;
    // Watches decrypt too.
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .context("no watch event for the rewrite")?
        .context("watch ended")??;
    match ev {
        WatchEvent::Modified(o) => {
            let s: Secret = o.into_kind().context("a Secret")?;
            assert_eq!(s.data, secret("db").data);
        }
        other => bail!("expected MODIFIED, got {other:?}"),
    }
    // Once current, an update that changes nothing is still not written.
    let again = admin.update(&rewritten).await?;
    assert_eq!(
        again.metadata.resource_version,
        rewritten.metadata.resource_version
    );
    // The documented way, for every Secret at once: `db` is current already, `other` is not.
    let listed = skiffctl(&api, &["get", "secrets", "-A", "-o", "yaml"], None)?;
    let applied = skiffctl(&api, &["apply", "-f", "-"], Some(&listed))?;
    assert!(
        applied.contains("secret/db unchanged") && applied.contains("secret/other configured"),
        "{applied}"
    );
    assert_encrypted(
        &etcd,
        "/registry/secrets/default/other",
        "key2",
        &[PASSWORD_B64],
    )?;

    // Step 3: drop the old key; everything reads with the new one alone.
    api.restart_with_encryption(&secrets_config(&[("key2", &key2)]))?;
    let admin = api.client("admin").await?;
    let after: Secret = admin.get("default", "db").await?;
    assert_eq!(after.data, secret("db").data);
    let cm: ConfigMap = admin.get("default", "app").await?;
    assert_eq!(cm.data.get("settings").map(String::as_str), Some(SETTING));

    // Without the key that wrote it, a value is unreadable, and the error says which key.
    api.restart_with_encryption(&secrets_config(&[("key1", &key1)]))?;
    let admin = api.client("admin").await?;
    let err = admin
        .get::<Secret>("default", "db")
        .await
        .expect_err("key2 is gone");
    let text = err.to_string();
    assert!(
        text.contains("no matching key was found") && text.contains("\"key2\""),
        "unexpected error: {text}"
    );
    Ok(())
}

#[tokio::test]
async fn identity_first_reads_encrypted_secrets_and_writes_them_back_as_plain_json() -> Result<()> {
    let key1 = random_key()?;
    let Some((etcd, mut api, admin)) =
        start("encryption_identity", secrets_config(&[("key1", &key1)])).await?
    else {
        return Ok(());
    };
    admin.create(&secret("old")).await?;
    assert_encrypted(
        &etcd,
        "/registry/secrets/default/old",
        "key1",
        &[PASSWORD_B64],
    )?;
    let decrypting = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {{}}\n  - aesgcm:\n      keys:\n      - name: key1\n        secret: {key1}\n"
    );
    api.restart_with_encryption(&decrypting)?;
    let admin = api.client("admin").await?;
    let old: Secret = admin.get("default", "old").await?;
    assert_eq!(old.data, secret("old").data, "aesgcm, second, still reads");
    admin.create(&secret("new")).await?;
    let new_value = raw(&etcd, "/registry/secrets/default/new")?;
    assert!(new_value.starts_with(b"{"), "identity first writes JSON");
    assert!(contains(&new_value, PASSWORD_B64));
    // Rewriting decrypts what was encrypted.
    admin.update(&old).await?;
    let old_value = raw(&etcd, "/registry/secrets/default/old")?;
    assert!(old_value.starts_with(b"{"), "rewritten as JSON");
    assert!(contains(&old_value, PASSWORD_B64));
    Ok(())
}

#[tokio::test]
async fn a_bad_encryption_configuration_stops_the_server_naming_the_file_and_field() -> Result<()> {
    if !etcd_available("encryption_bad_config") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let yaml = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - {name: k, secret: c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbywgZm8=}\n";
    let err = ApiServer::start(
        &etcd,
        &ApiOptions {
            encryption: Encryption::Config(yaml.into()),
            ..Default::default()
        },
    )
    .expect_err("aescbc is refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("encryption.yaml") && text.contains("resources[0].providers[0].aescbc"),
        "unexpected error: {text}"
    );
    Ok(())
}

/// Every integration test's API server encrypts everything by default: pods included.
#[tokio::test]
async fn the_default_test_api_server_encrypts_every_resource() -> Result<()> {
    if !etcd_available("encryption_default") {
        return Ok(());
    }
    let etcd = Etcd::start(1)?;
    let api = ApiServer::start(&etcd, &ApiOptions::default())?;
    let admin = api.client("admin").await?;
    admin.create(&pod("web")).await?;
    assert_encrypted(
        &etcd,
        "/registry/pods/default/web",
        "testbed",
        &["busybox:local"],
    )?;
    let p: Pod = admin.get("default", "web").await?;
    assert_eq!(p.spec.containers[0].image, "busybox:local");
    Ok(())
}
