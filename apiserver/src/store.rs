//! etcd access: object keys, paged consistent lists, transactions, and retries of requests that
//! never reached a member.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions, Txn, TxnOp,
    TxnResponse, WatchOptions, WatchStream,
};
use skiff_api::{Object, ResourceInfo};

use super::{
    encryption::{Encryption, TransformError},
    error::{ApiError, Chain, Result, never_sent, retriable},
    health::EtcdHealth,
    metrics::Metrics,
};

/// How many keys one etcd range request returns while listing.
const PAGE: i64 = 500;
/// The largest etcd response accepted: a page of the largest objects, or a watch response
/// carrying many revisions with their previous values.
const MAX_ETCD_RESPONSE: usize = 1 << 30;
/// Attempts for a request whose earlier attempts never reached a member.
const ATTEMPTS: usize = 8;

/// The API server's credentials for etcd: the CA that signed etcd's serving certificates, and
/// the client certificate and key etcd checks (`--etcd-cafile`, `--etcd-certfile`,
/// `--etcd-keyfile`, as Kubernetes' API server names them).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdTls {
    fn options(&self) -> anyhow::Result<TlsOptions> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?)))
    }
}

/// Checks that the endpoints and the TLS settings agree: `https://` endpoints need the
/// client certificate (etcd refuses a client without one), and certificate files given for
/// `http://` endpoints would silently go unused.
pub fn check_endpoints(endpoints: &[String], tls: Option<&EtcdTls>) -> anyhow::Result<()> {
    for e in endpoints {
        match (e.split_once("://").map(|(s, _)| s), tls) {
            (Some("https"), Some(_)) | (Some("http"), None) => {}
            (Some("https"), None) => anyhow::bail!(
                "the etcd endpoint {e} is https: give --etcd-cafile, --etcd-certfile and --etcd-keyfile"
            ),
            (Some("http"), Some(_)) => anyhow::bail!(
                "the etcd endpoint {e} is plain http, but etcd client certificates were given: use https://"
            ),
            _ => anyhow::bail!(
                "the etcd endpoint {e:?} must be http://host:port or https://host:port"
            ),
        }
    }
    if endpoints.is_empty() {
        anyhow::bail!("no etcd endpoint given");
    }
    Ok(())
}

/// The API server's handle on etcd.
#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    metrics: Arc<Metrics>,
    /// Stamped by every call etcd answers (the `etcd` readiness check).
    health: Arc<EtcdHealth>,
    /// Encryption at rest: how object values are written and read back.
    encryption: Arc<Encryption>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .field("encryption", &self.encryption)
            .finish()
    }
}

/// One stored object, read through the encryption providers: its JSON and its mod revision.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    /// The plaintext (JSON of an object, or an allocation's owner).
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// Read with a provider or key other than the one writes use now: an update rewrites it
    /// even when it changes nothing else (how keys are rotated).
    pub stale: bool,
    /// Why the stored value could not be decrypted, if it could not.
    unreadable: Option<TransformError>,
}

impl Stored {
    /// Decodes the stored object and sets its resourceVersion.
    pub fn decode(&self) -> Result<Object> {
        if let Some(e) = &self.unreadable {
            return Err(unreadable(&self.key, e));
        }
        let mut o = Object::from_json(&self.value).map_err(|source| ApiError::Corrupt {
            key: self.key.clone(),
            source,
        })?;
        o.meta_mut().resource_version = self.mod_revision.to_string();
        Ok(o)
    }
}

/// The error of a value the providers could not decrypt.
fn unreadable(key: &str, e: &TransformError) -> ApiError {
    ApiError::Transform {
        key: key.to_owned(),
        source: e.clone(),
    }
}

impl Store {
    /// Connects to every endpoint given (`https://127.0.0.1:2379`, ...), with mutual TLS when
    /// `tls` is given.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
        metrics: Arc<Metrics>,
        encryption: Arc<Encryption>,
    ) -> anyhow::Result<Store> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls.options()?);
        }
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Store {
            client,
            prefix: prefix.trim_end_matches('/').to_owned(),
            metrics,
            health: Arc::default(),
            encryption,
        })
    }

    /// The resource (plural) an object key belongs to: `pods` for `/registry/pods/default/web`.
    fn resource_of<'k>(&self, key: &'k str) -> &'k str {
        key.strip_prefix(self.prefix.as_str())
            .and_then(|k| k.strip_prefix('/'))
            .and_then(|k| k.split('/').next())
            .unwrap_or("")
    }

    /// An etcd key and value, the value decrypted as the resource's providers say.
    pub fn stored(&self, kv: &KeyValue) -> Stored {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let (value, stale, unreadable) =
            match self
                .encryption
                .open(self.resource_of(&key), kv.key(), kv.value())
            {
                Ok(plain) => (plain.value, plain.stale, None),
                Err(e) => (Vec::new(), false, Some(e)),
            };
        Stored {
            key,
            value,
            mod_revision: kv.mod_revision(),
            stale,
            unreadable,
        }
    }

    /// The write of an object's JSON at `key`, encrypted as the resource's first provider says.
    pub fn put(&self, key: &str, json: Vec<u8>) -> Result<TxnOp> {
        let value = self
            .encryption
            .seal(self.resource_of(key), key.as_bytes(), json)
            .map_err(|source| ApiError::Seal {
                key: key.to_owned(),
                source,
            })?;
        Ok(TxnOp::put(key, value, None))
    }

    /// `/registry/pods/default/web-1`, `/registry/nodes/node-1`.
    pub fn key(&self, info: &ResourceInfo, namespace: &str, name: &str) -> String {
        if info.namespaced {
            format!("{}/{}/{}/{}", self.prefix, info.plural, namespace, name)
        } else {
            format!("{}/{}/{}", self.prefix, info.plural, name)
        }
    }

    /// The key prefix of a resource, or of one namespace of it (always ending in '/').
    pub fn prefix(&self, info: &ResourceInfo, namespace: &str) -> String {
        if info.namespaced && !namespace.is_empty() {
            format!("{}/{}/{}/", self.prefix, info.plural, namespace)
        } else {
            format!("{}/{}/", self.prefix, info.plural)
        }
    }

    /// A key outside the object space (allocation records).
    pub fn raw_key(&self, suffix: &str) -> String {
        format!("{}/{}", self.prefix, suffix)
    }

    /// Runs an etcd call, retrying (on another endpoint, as the balanced channel rotates) when
    /// the attempt never reached a member or etcd was between leaders.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_with(op, true, f).await
    }

    /// Like `call`; `ambiguous_ok` says whether a request etcd may have applied before failing
    /// may be sent again (reads, and writes whose repeat is harmless).
    async fn call_with<T, F, Fut>(
        &self,
        op: &'static str,
        ambiguous_ok: bool,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f(self.client.clone()).await {
                Ok(v) => {
                    self.metrics.etcd(op, started.elapsed());
                    self.health.answered();
                    return Ok(v);
                }
                Err(e)
                    if attempt < ATTEMPTS
                        && (never_sent(&e) || (ambiguous_ok && retriable(&e))) =>
                {
                    tracing::debug!(op, attempt, error = %e, "etcd unavailable; retrying");
                    // A dead endpoint: the balanced channel picks another one at once. A member
                    // without a leader: give the election time (about a second).
                    let pause = if never_sent(&e) {
                        5
                    } else {
                        200 * attempt as u64
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => {
                    self.metrics.etcd(op, started.elapsed());
                    return Err(ApiError::Etcd(e));
                }
            }
        }
    }

    /// When etcd last answered.
    pub fn health(&self) -> &Arc<EtcdHealth> {
        &self.health
    }

    /// One linearizable read (a count of one key nothing writes) within `timeout`, recorded in
    /// [`Store::health`] only: neither retried nor timed into the etcd latency histogram, as it
    /// is no API request's call.
    pub async fn probe_health(&self, timeout: Duration) {
        let mut client = kv(&self.client);
        let read = client.get(
            self.raw_key("health"),
            Some(GetOptions::new().with_count_only()),
        );
        let why = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(_)) => return self.health.answered(),
            Ok(Err(e)) => {
                let e = ApiError::Etcd(e);
                // `/readyz/etcd` is public: it gets what a client would, the log the detail.
                if self.health.check().is_ok() {
                    tracing::warn!(error = %Chain(&e), "etcd health read failed; /readyz fails");
                }
                e.client_message()
            }
            Err(_) => {
                if self.health.check().is_ok() {
                    tracing::warn!(?timeout, "etcd health read timed out; /readyz fails");
                }
                format!("etcd did not answer within {timeout:?}")
            }
        };
        self.health.failed(why);
    }

    /// One key, with the revision the read was served at.
    pub async fn get(&self, key: &str) -> Result<(Option<Stored>, i64)> {
        let resp = self
            .call("get", |c| {
                let key = key.to_owned();
                async move { kv(&c).get(key, None).await }
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().first().map(|kv| self.stored(kv)), revision))
    }

    /// Every key under `prefix` as of one revision (`0`: the current one), paged so no single
    /// response grows with the cluster. Returns the objects and the revision they are from.
    pub async fn list(&self, prefix: &str, at: i64) -> Result<(Vec<Stored>, i64)> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = at;
        let mut items = Vec::new();
        loop {
            let resp = self
                .call("list", |c| {
                    let from = from.clone();
                    let end = end.clone();
                    async move {
                        kv(&c)
                            .get(
                                from,
                                Some(
                                    GetOptions::new()
                                        .with_range(end)
                                        .with_limit(PAGE)
                                        .with_revision(revision),
                                ),
                            )
                            .await
                    }
                })
                .await
                .map_err(|e| compacted(e, revision))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            items.extend(resp.kvs().iter().map(|kv| self.stored(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok((items, revision))
    }

    /// How many keys exist under a prefix, and the current revision.
    pub async fn count(&self, prefix: &str) -> Result<(i64, i64)> {
        let resp = self
            .range("count", prefix, GetOptions::new().with_count_only())
            .await?;
        Ok((resp.count(), resp.header().map_or(0, |h| h.revision())))
    }

    /// One read of the keys under `prefix` with `options` (the range is added here).
    async fn range(
        &self,
        op: &'static str,
        prefix: &str,
        options: GetOptions,
    ) -> Result<etcd_client::GetResponse> {
        let options = options.with_range(prefix_end(prefix));
        self.call(op, |c| {
            let (from, options) = (prefix.to_owned(), options.clone());
            async move { kv(&c).get(from, Some(options)).await }
        })
        .await
    }

    /// Fails with `Gone` when etcd has compacted the history after `revision`, exactly when an
    /// etcd watch from there (starting at `revision + 1`) would. A revision etcd has not reached
    /// yet is fine.
    pub async fn check_revision(&self, prefix: &str, revision: i64) -> Result<()> {
        let options = GetOptions::new()
            .with_limit(1)
            .with_keys_only()
            .with_revision(revision + 1);
        let r = self.range("check_revision", prefix, options).await;
        match r {
            Ok(_) => Ok(()),
            Err(ApiError::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::OutOfRange && s.message().contains("future") =>
            {
                Ok(())
            }
            Err(e) => Err(compacted(e, revision)),
        }
    }

    /// The current revision of the whole store.
    pub async fn revision(&self) -> Result<i64> {
        Ok(self.count(&self.prefix).await?.1)
    }

    /// Discards the history before `revision` (etcd keeps every version until compacted).
    /// A revision already compacted by another API server is not an error.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        let r = self
            .call("compact", |c| async move {
                c.kv_client().compact(revision, None).await
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(ApiError::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::OutOfRange =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Keys (without values) under a prefix.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let resp = self
            .range("keys", prefix, GetOptions::new().with_keys_only())
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// A transaction (every read-modify-write is one). With `repeatable`, a transaction etcd may
    /// have applied before failing is sent again: only for writes whose compare makes a repeat
    /// harmless and whose caller recognises its own earlier success (creates carry a fresh uid,
    /// deletes end with the object gone). An update is not repeated: an identical concurrent
    /// write would be indistinguishable from its own, so the caller gets the error and rereads.
    pub async fn txn(&self, op: &'static str, repeatable: bool, txn: Txn) -> Result<TxnResponse> {
        self.call_with(op, repeatable, |c| {
            let txn = txn.clone();
            async move { kv(&c).txn(txn).await }
        })
        .await
    }

    /// Starts an etcd watch of a prefix after `after` (exclusive), with previous values and
    /// progress notifications.
    pub async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream> {
        let end = prefix_end(prefix);
        self.call("watch", |c| {
            let (key, end) = (prefix.to_owned(), end.clone());
            async move {
                let mut w = c
                    .watch_client()
                    .max_decoding_message_size(MAX_ETCD_RESPONSE);
                w.watch(
                    key,
                    Some(
                        WatchOptions::new()
                            .with_range(end)
                            .with_start_revision(after + 1)
                            .with_prev_key()
                            .with_progress_notify(),
                    ),
                )
                .await
            }
        })
        .await
    }
}

/// A KV client that accepts responses as large as a page of objects can be (tonic's default of
/// 4 MiB is less than a page of 500 objects of 1 MiB each).
fn kv(c: &Client) -> etcd_client::KvClient {
    c.kv_client().max_decoding_message_size(MAX_ETCD_RESPONSE)
}

/// The end of the key range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn compacted(e: ApiError, revision: i64) -> ApiError {
    match &e {
        // etcd's own "required revision has been compacted" (a status made by this process's
        // transport would carry its cause as a source).
        ApiError::Etcd(etcd_client::Error::GRpcStatus(s))
            if s.code() == tonic::Code::OutOfRange && std::error::Error::source(s).is_none() =>
        {
            ApiError::Gone {
                requested: revision,
                compacted: 0,
            }
        }
        _ => e,
    }
}
