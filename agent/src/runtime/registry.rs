//! A client of the OCI distribution API (what containerd's own resolver and fetcher do):
//! manifests resolved by tag or digest, blobs fetched as streams, the registry's token
//! authentication (`WWW-Authenticate: Bearer realm=...`, with basic credentials given to the
//! token service) and plain basic authentication, over the endpoints of the node's
//! [`RegistryHosts`] (mirrors first, then the server; `http://` endpoints in plain HTTP).
//!
//! Written on reqwest rather than the `oci-client` crate: oci-client builds every URL as
//! `<scheme>://<registry>/v2/<repository>`, so a mirror with a path, containerd's
//! `override_path` and the `ns` query parameter mirrors get cannot be expressed, its TLS
//! settings are per client rather than per host of one pull, and it brings a JWT and
//! canonical-JSON stack the agent does not need.
//!
//! Credentials come from `.dockerconfigjson` (Secrets of type `kubernetes.io/dockerconfigjson`,
//! a pod's imagePullSecrets), matched to an image as the kubelet matches them.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use base64::Engine as _;
use reqwest::{StatusCode, header};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject as _},
};
use sha2::{Digest as _, Sha256};

use super::{
    Error,
    hosts::{DOCKER_HUB, Endpoint, RegistryHosts},
};

/// Media types of manifests and indexes a pull accepts.
pub(crate) const MEDIA_MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_MANIFEST_DOCKER: &str =
    "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MEDIA_INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_INDEX_DOCKER: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether `media_type` is a manifest or index type Skiff pulls (OCI or Docker schema 2).
pub(crate) fn is_manifest_media_type(media_type: &str) -> bool {
    [
        MEDIA_MANIFEST_OCI,
        MEDIA_MANIFEST_DOCKER,
        MEDIA_INDEX_OCI,
        MEDIA_INDEX_DOCKER,
    ]
    .contains(&media_type)
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest or index read.
const MAX_MANIFEST: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The system's CA bundle (Debian's ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a pull failed, keeping the registry's own reason. Cheap to clone: the waiters of one
/// pull all get its error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullError {
    /// The registry (or its token service) refused the credentials, or there were none.
    #[error("failed to authorize at {host}{}", reason(message))]
    Unauthorized {
        host: String,
        status: u16,
        message: String,
    },
    /// No such repository, tag or digest.
    #[error("{reference}: not found{}", reason(message))]
    NotFound { reference: String, message: String },
    /// The registry could not be reached (DNS, connect, TLS, a broken transfer).
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    /// What arrived is not what its digest says.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Any other answer of the registry.
    #[error("{url}: unexpected status {status}{}", reason(message))]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    /// The manifest cannot be pulled (media type, no image for this platform, bad JSON).
    #[error("{what}")]
    Manifest { what: String },
    /// Storing or unpacking in containerd failed.
    #[error(transparent)]
    Store(Arc<Error>),
    /// Every credential tried failed: their errors, in the order tried, shown as the
    /// kubelet shows an aggregate (`[a, b]`, a repeated message once).
    #[error("{}", aggregate(.0))]
    Attempts(Vec<PullError>),
}

/// The kubelet's aggregate error text: distinct messages in order, one alone as itself.
fn aggregate(errors: &[PullError]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        let m = e.to_string();
        if !seen.contains(&m) {
            seen.push(m);
        }
    }
    match seen.as_slice() {
        [one] => one.clone(),
        all => format!("[{}]", all.join(", ")),
    }
}

fn reason(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// Credentials for one registry (or one path prefix of it).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials by registry, as `.dockerconfigjson` keys them (`host[:port][/path]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// (host[:port], path prefix without leading '/', credential), in the order added.
    entries: Vec<(String, String, Credential)>,
}

/// What is wrong with a `.dockerconfigjson`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("not a docker config JSON: {0}")]
    Json(String),
    #[error("auths[{key:?}].auth is not base64 of \"username:password\"")]
    Auth { key: String },
}

/// One registry's entry of a docker config: `username`, `password` and `auth` (base64 of
/// `username:password`, filling what the others leave empty).
#[derive(serde::Deserialize)]
struct ConfigEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

impl Credentials {
    /// No credentials: anonymous pulls.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds one credential for `key` (`https://index.docker.io/v1/`, `quay.io`,
    /// `10.250.0.2:5000/team`...).
    pub fn add(&mut self, key: &str, credential: Credential) {
        let (host, path) = parse_key(key);
        self.entries.push((host, path, credential));
    }

    /// Adds every credential of a `.dockerconfigjson` (`{"auths": {KEY: {username, password,
    /// auth}}}`; `auth` is base64 of `username:password` and fills what the others leave
    /// empty).
    pub fn add_docker_config_json(&mut self, json: &[u8]) -> Result<(), CredentialError> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            auths: std::collections::BTreeMap<String, ConfigEntry>,
        }
        let config: Config =
            serde_json::from_slice(json).map_err(|e| CredentialError::Json(e.to_string()))?;
        self.add_entries(config.auths)
    }

    /// Adds every credential of a legacy `.dockercfg` (Secrets of type
    /// `kubernetes.io/dockercfg`, which the kubelet still reads): the registries' entries at
    /// the top level, `{KEY: {username, password, auth, email}}`.
    pub fn add_dockercfg(&mut self, json: &[u8]) -> Result<(), CredentialError> {
        let config: std::collections::BTreeMap<String, ConfigEntry> =
            serde_json::from_slice(json).map_err(|e| CredentialError::Json(e.to_string()))?;
        self.add_entries(config)
    }

    fn add_entries(
        &mut self,
        entries: std::collections::BTreeMap<String, ConfigEntry>,
    ) -> Result<(), CredentialError> {
        for (key, e) in entries {
            let (mut username, mut password) = (e.username, e.password);
            if !e.auth.is_empty() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(e.auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| CredentialError::Auth { key: key.clone() })?;
                let (u, p) = decoded
                    .split_once(':')
                    .ok_or_else(|| CredentialError::Auth { key: key.clone() })?;
                if username.is_empty() {
                    username = u.to_owned();
                }
                if password.is_empty() {
                    password = p.to_owned();
                }
            }
            if username.is_empty() && password.is_empty() {
                continue;
            }
            self.add(&key, Credential { username, password });
        }
        Ok(())
    }

    /// Every credential that matches repository `path` of `registry`, in the order the kubelet
    /// tries them: longer path prefixes first, then in the order added; each once.
    pub fn matching(&self, registry: &str, path: &str) -> Vec<&Credential> {
        let registry = canonical_host(registry);
        let mut found: Vec<(usize, &Credential)> = self
            .entries
            .iter()
            .filter(|(host, prefix, _)| {
                host_matches(host, &registry)
                    && (prefix.is_empty()
                        || path == prefix
                        || path.starts_with(&format!("{prefix}/")))
            })
            .map(|(_, prefix, c)| (prefix.len(), c))
            .collect();
        found.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let mut out: Vec<&Credential> = Vec::new();
        for (_, c) in found {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// A digest of the whole set (hosts, paths, usernames and passwords), so that pulls with
    /// different credentials are told apart without keeping the secrets in a key.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for (host, path, c) in &self.entries {
            for part in [host, path, &c.username, &c.password] {
                hasher.update(part.len().to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The key that concurrent pulls of image `name` (normalized) with these credentials
    /// share: a pull with other credentials is a pull of its own, so that one pod's wrong
    /// password never fails another pod's pull.
    pub fn pull_key(&self, name: &str) -> String {
        format!("{name} {}", self.fingerprint())
    }

    /// The credential for repository `path` of `registry` (a reference's first component):
    /// keys match on host and port, the longest matching path prefix wins, `*.` matches one
    /// DNS label (the kubelet's rules); Docker Hub's keys (`https://index.docker.io/v1/`,
    /// `docker.io`, `registry-1.docker.io`) all name `docker.io`.
    ///
    /// The first of [`Credentials::matching`], so that it is the credential a pull tries first.
    pub fn for_image(&self, registry: &str, path: &str) -> Option<&Credential> {
        self.matching(registry, path).first().copied()
    }
}

fn canonical_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        h => h.to_ascii_lowercase(),
    }
}

/// `https://index.docker.io/v1/` -> (`docker.io`, ``); `quay.io/team` -> (`quay.io`, `team`).
fn parse_key(key: &str) -> (String, String) {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    let host = canonical_host(host);
    // A leading API version (`https://index.docker.io/v1/`, `reg:5000/v2/team`) is no
    // repository path: the kubelet, as Docker, drops it for every registry.
    let path = ["v1/", "v2/"]
        .iter()
        .find_map(|v| path.strip_prefix(v))
        .unwrap_or(path);
    let path = path.trim_matches('/');
    let path = if path == "v1" || path == "v2" {
        ""
    } else {
        path
    };
    (host, path.to_owned())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let (p_name, p_port) = pattern.split_once(':').unwrap_or((pattern, ""));
    let (h_name, h_port) = host.split_once(':').unwrap_or((host, ""));
    if p_port != h_port {
        return false;
    }
    let p: Vec<&str> = p_name.split('.').collect();
    let h: Vec<&str> = h_name.split('.').collect();
    p.len() == h.len()
        && p.iter().zip(&h).all(|(p, h)| {
            *p == *h || (p.starts_with('*') && wildcard(&p[1..], h) && !p[1..].contains('*'))
        })
}

/// A label pattern `*suffix` (after the star) against a label.
fn wildcard(suffix: &str, label: &str) -> bool {
    label.ends_with(suffix)
}

/// PEM certificates of a CA file.
pub(crate) fn parse_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The HTTP side of pulls: one reqwest client per TLS setting (system roots plus a host's
/// CAs, or no verification), shared by every pull of the agent.
#[derive(Debug)]
pub(crate) struct RegistryClient {
    pub(crate) hosts: RegistryHosts,
    roots: Arc<RootCertStore>,
    clients: Mutex<HashMap<(bool, Vec<std::path::PathBuf>), reqwest::Client>>,
}

impl RegistryClient {
    pub(crate) fn new(hosts: RegistryHosts) -> RegistryClient {
        let mut roots = RootCertStore::empty();
        match std::fs::read(SYSTEM_ROOTS) {
            Ok(pem) => {
                let certs = parse_pem(&pem).unwrap_or_default();
                let (added, _) = roots.add_parsable_certificates(certs);
                tracing::debug!(added, "system CA certificates");
            }
            Err(e) => tracing::warn!(
                "no system CA certificates ({SYSTEM_ROOTS}: {e}): only hosts.toml CAs are trusted"
            ),
        }
        RegistryClient {
            hosts,
            roots: Arc::new(roots),
            clients: Mutex::default(),
        }
    }

    fn client(&self, ep: &Endpoint) -> Result<reqwest::Client, PullError> {
        let key = (ep.skip_verify, ep.ca.clone());
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config_error = |e: String| PullError::Unreachable {
            url: ep.url(""),
            message: format!("TLS configuration: {e}"),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(e.to_string()))?;
        let tls = if ep.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(crate::tls::any_certificate(&provider))
                .with_no_client_auth()
        } else {
            let mut roots = (*self.roots).clone();
            for path in &ep.ca {
                let pem = std::fs::read(path)
                    .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
                for cert in parse_pem(&pem).map_err(config_error)? {
                    roots
                        .add(cert)
                        .map_err(|e| config_error(format!("{}: {e}", path.display())))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("skiff-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| config_error(chain_reqwest(&e)))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn chain_reqwest(e: &(dyn std::error::Error + 'static)) -> String {
    super::error::chain(e)
}

/// How requests to one endpoint authenticate, once a challenge was answered.
#[derive(Debug, Clone)]
enum Auth {
    Bearer(String),
    Basic,
}

/// One reference's registry session: its endpoints, its credential and the tokens got so far.
#[derive(Debug)]
pub(crate) struct Session<'a> {
    client: &'a RegistryClient,
    /// The reference's registry (`docker.io`, `10.250.0.2:5000`).
    registry: String,
    /// The repository path (`library/busybox`).
    repository: String,
    /// The pull's credentials: the registry's for its server, a mirror's own for a mirror
    /// (a registry's credential never goes to another host).
    credentials: Credentials,
    /// Which of the registry's matching credentials this session uses
    /// ([`Credentials::matching`]; the kubelet tries each in turn).
    attempt: usize,
    endpoints: Vec<Endpoint>,
    auth: HashMap<String, Auth>,
    /// Requests sent (for logs and tests).
    pub(crate) requests: u32,
}

/// A manifest or index as fetched: its descriptor and bytes.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) bytes: Vec<u8>,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        client: &'a RegistryClient,
        registry: &str,
        repository: &str,
        credentials: &Credentials,
    ) -> Session<'a> {
        Session {
            client,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            credentials: credentials.clone(),
            endpoints: client.hosts.endpoints(registry),
            auth: HashMap::new(),
            requests: 0,
            attempt: 0,
        }
    }

    /// How many sessions a pull may try, one per matching credential of the registry (one,
    /// anonymous, when none matches).
    pub(crate) fn attempts(&self) -> usize {
        self.credentials
            .matching(&self.registry, &self.repository)
            .len()
            .max(1)
    }

    /// The same session with the registry's `n`th matching credential, afresh (no tokens).
    pub(crate) fn with_attempt(mut self, n: usize) -> Session<'a> {
        self.attempt = n;
        self.auth.clear();
        self
    }

    fn credential(&self, ep: &Endpoint) -> Option<&Credential> {
        if ep.mirror {
            self.credentials.for_image(&ep.host, &self.repository)
        } else {
            self.credentials
                .matching(&self.registry, &self.repository)
                .get(self.attempt)
                .copied()
        }
    }

    fn reference(&self, tag_or_digest: &str) -> String {
        let sep = if tag_or_digest.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        format!("{}/{}{sep}{tag_or_digest}", self.registry, self.repository)
    }

    /// The manifest or index `tag_or_digest` names, from the first endpoint that has it
    /// (resolve-capable ones for a tag, pull-capable for a digest); by digest, checked.
    pub(crate) async fn manifest(&mut self, tag_or_digest: &str) -> Result<Fetched, PullError> {
        let by_digest = tag_or_digest.starts_with("sha256:");
        let rest = format!("{}/manifests/{tag_or_digest}", self.repository);
        let mut first_error = None;
        for ep in self.endpoints.clone() {
            if !(if by_digest { ep.pull } else { ep.resolve }) {
                continue;
            }
            let result = async {
                let resp = self
                    .get(&ep, &rest, ACCEPT_MANIFESTS, tag_or_digest)
                    .await?;
                let url = resp.url().to_string();
                let header_type = resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
                    .unwrap_or_default();
                let bytes = read_limited(resp, MAX_MANIFEST, &url).await?;
                let digest = sha256(&bytes);
                if by_digest && digest != tag_or_digest {
                    return Err(PullError::DigestMismatch {
                        what: format!("manifest {}", self.reference(tag_or_digest)),
                        expected: tag_or_digest.to_owned(),
                        actual: digest,
                    });
                }
                let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let media_type = [body_type, header_type]
                    .into_iter()
                    .find(|t| is_manifest_media_type(t))
                    .ok_or_else(|| PullError::Manifest {
                        what: format!(
                            "{}: unsupported manifest media type (Docker schema 1 and other \
                             types cannot be pulled)",
                            self.reference(tag_or_digest)
                        ),
                    })?;
                Ok(Fetched {
                    media_type,
                    digest,
                    bytes,
                })
            }
            .await;
            match result {
                Ok(f) => return Ok(f),
                Err(e) => {
                    tracing::debug!(host = %ep.host, error = %e, "resolving on a registry host");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| PullError::Manifest {
            what: format!(
                "no host of registry {} may resolve {tag_or_digest}",
                self.registry
            ),
        }))
    }

    /// The blob `digest` (or a manifest by digest when `manifest`), as a response whose body
    /// is read in chunks, from the first pull-capable endpoint that has it.
    pub(crate) async fn blob(
        &mut self,
        digest: &str,
        manifest: bool,
    ) -> Result<reqwest::Response, PullError> {
        let rest = if manifest {
            format!("{}/manifests/{digest}", self.repository)
        } else {
            format!("{}/blobs/{digest}", self.repository)
        };
        let accept = if manifest { ACCEPT_MANIFESTS } else { "*/*" };
        let mut first_error = None;
        for ep in self.endpoints.clone() {
            if !ep.pull {
                continue;
            }
            match self.get(&ep, &rest, accept, digest).await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::debug!(host = %ep.host, error = %e, "fetching from a registry host");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| PullError::Manifest {
            what: format!("no host of registry {} may pull", self.registry),
        }))
    }

    /// GET with the endpoint's authentication, answering one challenge.
    async fn get(
        &mut self,
        ep: &Endpoint,
        rest: &str,
        accept: &str,
        object: &str,
    ) -> Result<reqwest::Response, PullError> {
        let client = self.client.client(ep)?;
        let url = ep.url(rest);
        let unreachable = |e: reqwest::Error| PullError::Unreachable {
            url: url.clone(),
            message: chain_reqwest(&e),
        };
        for attempt in 0..2 {
            let mut req = client.get(&url).header(header::ACCEPT, accept);
            if ep.mirror {
                req = req.query(&[("ns", &self.registry)]);
            }
            match self.auth.get(&ep.host) {
                Some(Auth::Bearer(token)) => req = req.bearer_auth(token),
                Some(Auth::Basic) => {
                    if let Some(c) = self.credential(ep) {
                        req = req.basic_auth(&c.username, Some(&c.password));
                    }
                }
                None => {}
            }
            self.requests += 1;
            let resp = req.send().await.map_err(unreachable)?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let message = error_message(resp).await;
            match status {
                StatusCode::UNAUTHORIZED if attempt == 0 && challenge.is_some() => {
                    let challenge = challenge.unwrap_or_default();
                    self.answer(ep, &challenge, &message).await?;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(PullError::Unauthorized {
                        host: ep.host.clone(),
                        status: status.as_u16(),
                        message: status_text(status, &message),
                    });
                }
                StatusCode::NOT_FOUND => {
                    return Err(PullError::NotFound {
                        reference: self.reference(object),
                        message,
                    });
                }
                _ => {
                    return Err(PullError::Status {
                        url,
                        status: status.as_u16(),
                        message,
                    });
                }
            }
        }
        Err(PullError::Unauthorized {
            host: ep.host.clone(),
            status: 401,
            message: "401 Unauthorized".into(),
        })
    }

    /// Answers a `WWW-Authenticate` challenge: a token from the realm (with the credential,
    /// if any) for Bearer, the credential itself for Basic.
    async fn answer(
        &mut self,
        ep: &Endpoint,
        challenge: &str,
        message: &str,
    ) -> Result<(), PullError> {
        let (scheme, params) = parse_challenge(challenge);
        let refused = |status: u16, message: String| PullError::Unauthorized {
            host: ep.host.clone(),
            status,
            message,
        };
        match scheme.as_str() {
            "basic" => {
                if self.credential(ep).is_none() {
                    return Err(refused(401, status_text(StatusCode::UNAUTHORIZED, message)));
                }
                self.auth.insert(ep.host.clone(), Auth::Basic);
                Ok(())
            }
            "bearer" => {
                let realm = params.get("realm").cloned().unwrap_or_default();
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(refused(
                        401,
                        format!("the registry's token realm {realm:?} is not a URL"),
                    ));
                }
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(s) = params.get("service") {
                    query.push(("service", s.clone()));
                }
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                query.push(("scope", scope));
                let client = self.client.client(ep)?;
                let mut req = client.get(&realm).query(&query);
                if let Some(c) = self.credential(ep) {
                    if realm_may_get_credentials(ep, &realm) {
                        req = req.basic_auth(&c.username, Some(&c.password));
                    } else {
                        tracing::warn!(host = %ep.host, %realm, "not sending registry credentials to a token realm over plain HTTP; asking for an anonymous token");
                    }
                }
                self.requests += 1;
                let resp = req.send().await.map_err(|e| PullError::Unreachable {
                    url: realm.clone(),
                    message: chain_reqwest(&e),
                })?;
                let status = resp.status();
                if !status.is_success() {
                    let message = error_message(resp).await;
                    return Err(refused(
                        status.as_u16(),
                        format!("fetching a token: {}", status_text(status, &message)),
                    ));
                }
                let bytes = read_limited(resp, 1 << 20, &realm).await?;
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| PullError::Unreachable {
                        url: realm.clone(),
                        message: format!("the token service answered no JSON: {e}"),
                    })?;
                let token = body["token"]
                    .as_str()
                    .or_else(|| body["access_token"].as_str())
                    .unwrap_or_default();
                if token.is_empty() {
                    return Err(refused(401, "the token service returned no token".into()));
                }
                self.auth
                    .insert(ep.host.clone(), Auth::Bearer(token.to_owned()));
                Ok(())
            }
            other => Err(refused(
                401,
                format!("unsupported authentication scheme {other:?}"),
            )),
        }
    }
}

/// Whether basic credentials may go to token realm `realm` of endpoint `ep`. Skiff's rule
/// (the realm is named by the registry's answer, which a plain-HTTP hop can forge): over HTTPS to any host (Docker Hub's realm is auth.docker.io, not the registry's host);
/// over plain HTTP only when the endpoint itself is plain HTTP and the realm is on the same
/// `host[:port]`, so credentials never travel in the clear where the registry would not have
/// sent them, nor in the clear to another host. Otherwise the token is asked for anonymously.
fn realm_may_get_credentials(ep: &Endpoint, realm: &str) -> bool {
    if realm.starts_with("https://") {
        return true;
    }
    let Some(rest) = realm.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    ep.scheme == super::hosts::Scheme::Http && host.eq_ignore_ascii_case(&ep.host)
}

fn status_text(status: StatusCode, message: &str) -> String {
    let s = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    if message.is_empty() {
        s
    } else {
        format!("{s}: {message}")
    }
}

/// The registry's own reason from an error body (`{"errors":[{"code","message"}]}`), else the
/// body's first line.
async fn error_message(resp: reqwest::Response) -> String {
    let bytes = read_prefix(resp, MAX_ERROR_BODY).await;
    let bytes = &bytes[..];
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(errors) = v["errors"].as_array()
    {
        return errors
            .iter()
            .map(|e| {
                let code = e["code"].as_str().unwrap_or_default();
                let message = e["message"].as_str().unwrap_or_default();
                match (code.is_empty(), message.is_empty()) {
                    (false, false) => format!("{code}: {message}"),
                    (true, false) => message.to_owned(),
                    _ => code.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(200)
        .collect()
}

/// `Bearer realm="https://auth",service="reg",scope="repository:x:pull"` -> ("bearer", map).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    url: &str,
) -> Result<Vec<u8>, PullError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| PullError::Unreachable {
        url: url.to_owned(),
        message: chain_reqwest(&e),
    })? {
        out.extend_from_slice(&chunk);
        if out.len() > max {
            return Err(PullError::Manifest {
                what: format!("{url}: larger than {max} bytes"),
            });
        }
    }
    Ok(out)
}

/// The most of an error body read for its message.
const MAX_ERROR_BODY: usize = 4096;

/// At most the first `max` bytes of a body, then stops reading (the rest is dropped with the
/// response); a body that fails part way gives what came before.
async fn read_prefix(mut resp: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    out.truncate(max);
    out
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(u: &str) -> Credential {
        Credential {
            username: u.into(),
            password: "p".into(),
        }
    }

    #[test]
    fn docker_config_json_with_auth_and_username_password() {
        let mut c = Credentials::none();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        c.add_docker_config_json(
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                   "10.250.0.2:5000":{{"username":"bob","password":"pw"}}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let hub = c.for_image("docker.io", "library/busybox").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret")
        );
        assert_eq!(
            c.for_image("10.250.0.2:5000", "app").unwrap().username,
            "bob"
        );
        assert!(c.for_image("10.250.0.2:5001", "app").is_none());
        assert!(c.for_image("quay.io", "app").is_none());
        assert!(
            c.add_docker_config_json(b"{\"auths\":{\"x\":{\"auth\":\"!!\"}}}")
                .is_err()
        );
        assert!(c.add_docker_config_json(b"not json").is_err());
    }

    #[test]
    fn keys_match_with_or_without_scheme_and_the_longest_path_wins() {
        let mut c = Credentials::none();
        c.add("quay.io", cred("all"));
        c.add("https://quay.io/team/", cred("team"));
        c.add("*.example.com", cred("wild"));
        c.add("docker.io", cred("hub"));
        assert_eq!(c.for_image("quay.io", "team/app").unwrap().username, "team");
        assert_eq!(c.for_image("quay.io", "teamx/app").unwrap().username, "all");
        assert_eq!(
            c.for_image("reg.example.com", "a").unwrap().username,
            "wild"
        );
        assert!(c.for_image("a.b.example.com", "a").is_none());
        assert_eq!(
            c.for_image("index.docker.io", "x/y").unwrap().username,
            "hub"
        );
    }

    #[test]
    fn every_matching_credential_is_listed_most_specific_first_and_once() {
        let mut c = Credentials::none();
        c.add("quay.io", cred("host"));
        c.add("quay.io/team", cred("team"));
        c.add("quay.io/team/app", cred("app"));
        c.add("quay.io", cred("host-2"));
        c.add("https://quay.io/", cred("host"));
        c.add("*.quay.io", cred("wild"));
        c.add("quay.io:443", cred("port"));
        let names = |registry: &str, path: &str| -> Vec<String> {
            c.matching(registry, path)
                .into_iter()
                .map(|c| c.username.clone())
                .collect()
        };
        let cases: [(&str, &str, &[&str]); 5] = [
            ("quay.io", "team/app", &["app", "team", "host", "host-2"]),
            ("quay.io", "team/other", &["team", "host", "host-2"]),
            ("quay.io", "teamx/app", &["host", "host-2"]),
            ("eu.quay.io", "team/app", &["wild"]),
            ("registry.example", "team/app", &[]),
        ];
        for (registry, path, want) in cases {
            assert_eq!(names(registry, path), want, "{registry}/{path}");
        }
    }

    #[test]
    fn pulls_share_a_key_only_with_the_same_image_and_the_same_credentials() {
        let mut a = Credentials::none();
        a.add("quay.io", cred("alice"));
        let mut same = Credentials::none();
        same.add("quay.io", cred("alice"));
        let mut other = Credentials::none();
        other.add("quay.io", cred("bob"));
        let image = "quay.io/app:v1";
        assert_eq!(a.pull_key(image), same.pull_key(image));
        assert_ne!(a.pull_key(image), other.pull_key(image));
        assert_ne!(a.pull_key(image), Credentials::none().pull_key(image));
        assert_ne!(a.pull_key(image), a.pull_key("quay.io/app:v2"));
        assert!(!a.pull_key(image).contains("secret"));
    }

    #[test]
    fn the_credential_for_an_image_is_the_first_a_pull_tries() {
        let mut c = Credentials::none();
        c.add("quay.io", cred("first"));
        c.add("*.quay.io", cred("wild"));
        c.add("quay.io", cred("second"));
        c.add("quay.io/team", cred("team"));
        c.add("quay.io/team", cred("team-2"));
        for (registry, path, want) in [
            ("quay.io", "app", "first"),
            ("quay.io", "team/app", "team"),
            ("eu.quay.io", "team/app", "wild"),
        ] {
            assert_eq!(
                c.for_image(registry, path).unwrap().username,
                want,
                "{registry}/{path}"
            );
            assert_eq!(
                c.for_image(registry, path),
                c.matching(registry, path).first().copied()
            );
        }
        assert!(c.for_image("registry.example", "app").is_none());
    }

    #[test]
    fn a_legacy_dockercfg_gives_the_same_credentials_as_a_dockerconfigjson() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        type Case = (&'static str, String, Option<(&'static str, &'static str)>);
        let cases: [Case; 4] = [
            (
                "auth",
                format!(r#"{{"10.250.0.2:5000":{{"auth":"{auth}","email":"a@example.com"}}}}"#),
                Some(("alice", "s3cret")),
            ),
            (
                "username and password",
                r#"{"https://10.250.0.2:5000/v1/":{"username":"bob","password":"pw"}}"#.into(),
                Some(("bob", "pw")),
            ),
            (
                "another registry",
                format!(r#"{{"quay.io":{{"auth":"{auth}"}}}}"#),
                None,
            ),
            ("empty", "{}".into(), None),
        ];
        for (case, json, want) in cases {
            let mut c = Credentials::none();
            c.add_dockercfg(json.as_bytes()).expect(case);
            let got = c
                .for_image("10.250.0.2:5000", "app")
                .map(|c| (c.username.as_str(), c.password.as_str()));
            assert_eq!(got, want, "{case}");
        }
        let mut c = Credentials::none();
        assert!(
            c.add_dockercfg(b"{\"r\": \"x\"}").is_err(),
            "an entry is an object"
        );
        assert!(c.add_dockercfg(b"[]").is_err(), "the config is an object");
        assert!(c.add_dockercfg(b"{\"r\":{\"auth\":\"!!\"}}").is_err());
    }

    #[test]
    fn credential_sets_that_differ_in_anything_have_different_fingerprints() {
        let set = |entries: &[(&str, &str, &str)]| {
            let mut c = Credentials::none();
            for (key, user, password) in entries {
                c.add(
                    key,
                    Credential {
                        username: (*user).into(),
                        password: (*password).into(),
                    },
                );
            }
            c.fingerprint()
        };
        let base = set(&[("r:5000", "alice", "right")]);
        assert_eq!(base, set(&[("r:5000", "alice", "right")]));
        for other in [
            set(&[("r:5000", "alice", "wrong")]),
            set(&[("r:5000", "bob", "right")]),
            set(&[("r:5001", "alice", "right")]),
            set(&[("r:5000/team", "alice", "right")]),
            set(&[("r:5000", "alice", "right"), ("q", "x", "y")]),
            set(&[("r:5000", "alic", "eright")]),
            set(&[]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn credentials_go_to_a_token_realm_only_over_https_or_to_the_plain_http_registry_itself() {
        let ep = |scheme, host: &str| Endpoint {
            scheme,
            host: host.into(),
            path: "/v2".into(),
            pull: true,
            resolve: true,
            skip_verify: false,
            ca: Vec::new(),
            mirror: false,
        };
        use super::super::hosts::Scheme::{Http, Https};
        let cases = [
            (
                Https,
                "registry-1.docker.io",
                "https://auth.docker.io/token",
                true,
            ),
            (Https, "r:5000", "https://r:5000/token", true),
            (Http, "r:5000", "https://auth.example/token", true),
            (Http, "r:5000", "http://r:5000/token?x=1", true),
            (Http, "r:5000", "http://R:5000/token", true),
            (Https, "r:5000", "http://r:5000/token", false),
            (Http, "r:5000", "http://auth.example/token", false),
            (Http, "r:5000", "http://r:5001/token", false),
            (Http, "r:5000", "http://r/token", false),
            (Http, "r:5000", "http://evil@r:5000.evil/token", false),
            (Http, "r:5000", "ftp://r:5000/token", false),
        ];
        for (scheme, host, realm, want) in cases {
            assert_eq!(
                realm_may_get_credentials(&ep(scheme, host), realm),
                want,
                "{scheme:?} {host} {realm}"
            );
        }
    }

    #[test]
    fn failed_attempts_read_as_the_kubelets_aggregate_error() {
        let unauthorized = |m: &str| PullError::Unauthorized {
            host: "r".into(),
            status: 401,
            message: m.into(),
        };
        let cases = [
            (vec![unauthorized("a")], "failed to authorize at r: a"),
            (
                vec![unauthorized("a"), unauthorized("a")],
                "failed to authorize at r: a",
            ),
            (
                vec![unauthorized("a"), unauthorized("b"), unauthorized("a")],
                "[failed to authorize at r: a, failed to authorize at r: b]",
            ),
        ];
        for (errors, want) in cases {
            assert_eq!(PullError::Attempts(errors).to_string(), want);
        }
    }

    #[test]
    fn only_oci_and_docker_schema_2_manifests_and_indexes_are_manifest_types() {
        for t in [
            MEDIA_MANIFEST_OCI,
            MEDIA_MANIFEST_DOCKER,
            MEDIA_INDEX_OCI,
            MEDIA_INDEX_DOCKER,
        ] {
            assert!(is_manifest_media_type(t), "{t}");
        }
        for t in [
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "",
        ] {
            assert!(!is_manifest_media_type(t), "{t}");
        }
    }

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn errors_keep_the_registrys_reason() {
        let e = PullError::NotFound {
            reference: "10.250.0.2:5000/nope:latest".into(),
            message: "MANIFEST_UNKNOWN: manifest unknown".into(),
        };
        assert_eq!(
            e.to_string(),
            "10.250.0.2:5000/nope:latest: not found: MANIFEST_UNKNOWN: manifest unknown"
        );
        let e = PullError::Unauthorized {
            host: "r:5000".into(),
            status: 401,
            message: "401 Unauthorized: UNAUTHORIZED: authentication required".into(),
        };
        assert_eq!(
            e.to_string(),
            "failed to authorize at r:5000: 401 Unauthorized: UNAUTHORIZED: authentication required"
        );
    }

    #[tokio::test]
    async fn an_error_body_is_read_only_up_to_its_limit() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A registry that answers 404 with a body that never ends: reading it whole would never
        // finish.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err()
                || conn.write_all(b"denied by policy\n").await.is_err()
            {
                return;
            }
            let filler = vec![b'x'; 64 * 1024];
            while conn.write_all(&filler).await.is_ok() {
                counter.fetch_add(filler.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        let registry = RegistryClient::new(RegistryHosts::default());
        let ep = super::super::hosts::Endpoint {
            scheme: super::super::hosts::Scheme::Http,
            host: format!("127.0.0.1:{port}"),
            path: "/v2".into(),
            pull: true,
            resolve: true,
            skip_verify: false,
            ca: Vec::new(),
            mirror: false,
        };
        let resp = registry
            .client(&ep)
            .unwrap()
            .get(ep.url("app/manifests/v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let message = tokio::time::timeout(Duration::from_secs(10), error_message(resp))
            .await
            .expect("the body is read only up to the limit");
        assert_eq!(message, "denied by policy");
        // The server stops once the client closed; what it sent is bounded by buffers, far from
        // the 10 seconds of writes an unbounded read would take.
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the connection was closed")
            .unwrap();
        assert!(
            sent.load(std::sync::atomic::Ordering::Relaxed) < 64 << 20,
            "read far past the limit"
        );
    }

    /// A registry and token service on 127.0.0.1 (plain HTTP/1.1, one request a connection):
    /// manifests need a bearer token, which the token service gives for alice's password.
    async fn token_registry() -> (u16, Vec<u8>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#.to_vec();
        let body = manifest.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let manifest = body.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = conn.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    let auth = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let basic = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("alice:pw")
                    );
                    let (status, extra, body): (&str, String, Vec<u8>) = if target
                        .starts_with("/token?")
                    {
                        if target.contains("scope=repository%3Aapp%3Apull") && auth == basic {
                            ("200 OK", String::new(), br#"{"token":"T0K"}"#.to_vec())
                        } else {
                            (
                                "401 Unauthorized",
                                String::new(),
                                br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad creds"}]}"#
                                    .to_vec(),
                            )
                        }
                    } else if auth == "Bearer T0K" {
                        (
                            "200 OK",
                            format!("Content-Type: {MEDIA_MANIFEST_OCI}\r\n"),
                            manifest,
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            format!(
                                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",scope=\"repository:app:pull\"\r\n"
                            ),
                            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (port, manifest)
    }

    #[tokio::test]
    async fn a_bearer_challenge_gets_a_token_with_the_basic_credential() {
        let (port, manifest) = token_registry().await;
        let host = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(format!("skiff-token-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join(&host)).unwrap();
        std::fs::write(
            dir.join(&host).join("hosts.toml"),
            format!("server = \"http://{host}\"\n"),
        )
        .unwrap();
        let client = RegistryClient::new(RegistryHosts::load(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        let mut right = Credentials::none();
        right.add(&host, cred("alice"));
        right.entries[0].2.password = "pw".into();
        let mut session = Session::new(&client, &host, "app", &right);
        let fetched = session.manifest("v1").await.unwrap();
        assert_eq!(fetched.digest, sha256(&manifest));
        assert_eq!(fetched.media_type, MEDIA_MANIFEST_OCI);
        // Challenge, token, manifest again with the token.
        assert_eq!(session.requests, 3);
        // By digest: the digest is checked.
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = session.manifest(&wrong).await.unwrap_err();
        assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
        // Two credentials for the registry, the wrong one first: the second session has it.
        let mut both = Credentials::none();
        both.add(&format!("{host}/app"), cred("alice"));
        both.add(&host, cred("alice"));
        both.entries[1].2.password = "pw".into();
        let first = Session::new(&client, &host, "app", &both);
        assert_eq!(first.attempts(), 2);
        let mut first = first.with_attempt(0);
        assert!(matches!(
            first.manifest("v1").await.unwrap_err(),
            PullError::Unauthorized { .. }
        ));
        let mut second = Session::new(&client, &host, "app", &both).with_attempt(1);
        assert_eq!(
            second.manifest("v1").await.unwrap().digest,
            sha256(&manifest)
        );
        // No credential: the token service refuses, and its reason is kept.
        let mut session = Session::new(&client, &host, "app", &Credentials::none());
        let e = session.manifest("v1").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "failed to authorize at {host}: fetching a token: 401 Unauthorized: UNAUTHORIZED: bad creds"
            )
        );
    }
}
