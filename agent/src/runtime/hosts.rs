//! Per-node registry configuration in containerd's own `hosts.toml` format (containerd's
//! `config_path`): `DIR/<host[:port]>/hosts.toml` configures the registry `host[:port]`,
//! `DIR/_default/hosts.toml` every registry without a directory of its own.
//!
//! ```toml
//! server = "https://registry-1.docker.io"      # the upstream (default: https://<host>)
//!
//! [host."http://10.250.0.2:5000"]               # mirrors, tried in order before the server
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = false
//!   ca = "ca.pem"                               # or ["a.pem", "b.pem"]; relative to the dir
//!   override_path = false                       # true: the URL's path replaces `/v2`
//! ```
//!
//! `http://` hosts are reached over plain HTTP. Docker Hub's name `docker.io` is served by
//! `registry-1.docker.io`. Keys containerd has and Skiff does not honour (`client`, `header`,
//! `dial_timeout`, `push` alone), at the top level or in a `[host]` table, are refused with the
//! file's name rather than ignored.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::image::valid_domain;

/// The directory of the configuration for registries without one of their own.
pub const DEFAULT_DIR: &str = "_default";
/// Docker Hub's registry name in image references, and the host that serves it.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// What is wrong with the registry configuration.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// A file or directory could not be read.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A hosts.toml is not valid TOML of the expected shape.
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A hosts.toml is valid TOML but says something wrong or unsupported.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

/// Whether an endpoint is reached over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One host a registry's images can be fetched from: a mirror or the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]`.
    pub host: String,
    /// The API's root path, e.g. `/v2` (or the URL's own path with `override_path`).
    pub path: String,
    /// May fetch blobs and manifests by digest.
    pub pull: bool,
    /// May resolve tags to digests.
    pub resolve: bool,
    /// Accept any server certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files) for this host.
    pub ca: Vec<PathBuf>,
    /// A mirror rather than the registry's own server (requests carry `?ns=<registry>`).
    pub mirror: bool,
}

impl Endpoint {
    /// The URL of `rest` (e.g. `library/busybox/manifests/latest`) on this endpoint.
    pub fn url(&self, rest: &str) -> String {
        format!(
            "{}://{}{}/{}",
            self.scheme.as_str(),
            self.host,
            self.path.trim_end_matches('/'),
            rest
        )
    }

    fn server(scheme: Scheme, host: String) -> Endpoint {
        Endpoint {
            scheme,
            host,
            path: "/v2".into(),
            pull: true,
            resolve: true,
            skip_verify: false,
            ca: Vec::new(),
            mirror: false,
        }
    }
}

/// One hosts.toml, parsed.
#[derive(Debug, Clone, Default)]
struct HostsFile {
    server: Option<Endpoint>,
    mirrors: Vec<Endpoint>,
}

/// The node's registry configuration: every hosts.toml of the directory, checked.
#[derive(Debug, Clone, Default)]
pub struct RegistryHosts {
    /// By directory name (`host[:port]` or `_default`).
    files: BTreeMap<String, HostsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<StringOrList>,
    override_path: Option<bool>,
    client: Option<toml::Value>,
    header: Option<toml::Value>,
    dial_timeout: Option<String>,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<StringOrList>,
    override_path: Option<bool>,
    client: Option<toml::Value>,
    header: Option<toml::Value>,
    dial_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl RegistryHosts {
    /// Reads `dir/*/hosts.toml`. Directories without a hosts.toml are skipped (containerd does
    /// the same); anything wrong in a file is an error naming it.
    pub fn load(dir: &Path) -> Result<RegistryHosts, HostsError> {
        let read = |path: &Path| {
            let path = path.to_owned();
            move |source| HostsError::Read { path, source }
        };
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(read(dir))? {
            let entry = entry.map_err(read(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path().join("hosts.toml");
            if !entry.file_type().map_err(read(&entry.path()))?.is_dir() || !file.exists() {
                continue;
            }
            if name != DEFAULT_DIR && !valid_domain(&name) {
                return Err(HostsError::Invalid {
                    path: entry.path(),
                    problem: format!("{name:?} is not a registry host[:port]"),
                });
            }
            let text = fs::read_to_string(&file).map_err(read(&file))?;
            let parsed = parse(&text, &name, &entry.path()).map_err(|e| match e {
                ParseError::Toml(source) => HostsError::Parse {
                    path: file.clone(),
                    source,
                },
                ParseError::Invalid(problem) => HostsError::Invalid {
                    path: file.clone(),
                    problem,
                },
            })?;
            files.insert(name, parsed);
        }
        Ok(RegistryHosts { files })
    }

    /// The endpoints to try for images of `registry` (a reference's first component, e.g.
    /// `docker.io` or `10.250.0.2:5000`), in order: mirrors, then the server.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let file = self
            .files
            .get(registry)
            .or_else(|| self.files.get(DEFAULT_DIR));
        let default_server = || {
            let host = if registry == DOCKER_HUB {
                DOCKER_HUB_HOST.to_owned()
            } else {
                registry.to_owned()
            };
            Endpoint::server(Scheme::Https, host)
        };
        let Some(file) = file else {
            return vec![default_server()];
        };
        let mut out = file.mirrors.clone();
        out.push(file.server.clone().unwrap_or_else(default_server));
        out
    }
}

enum ParseError {
    Toml(toml::de::Error),
    Invalid(String),
}

fn parse(text: &str, dir_name: &str, dir: &Path) -> Result<HostsFile, ParseError> {
    let raw: RawFile = toml::from_str(text).map_err(ParseError::Toml)?;
    let top = RawSettings {
        capabilities: raw.capabilities,
        skip_verify: raw.skip_verify,
        ca: raw.ca,
        override_path: raw.override_path,
        client: raw.client,
        header: raw.header,
        dial_timeout: raw.dial_timeout,
    };
    refuse_unsupported(&top).map_err(ParseError::Invalid)?;
    let mut out = HostsFile::default();
    if let Some(server) = &raw.server {
        let mut e = endpoint(server, &top, dir).map_err(ParseError::Invalid)?;
        e.mirror = false;
        out.server = Some(e);
    } else if top.capabilities.is_some()
        || top.skip_verify.is_some()
        || top.ca.is_some()
        || top.override_path.is_some()
    {
        // Settings for the default server of the registry.
        if dir_name == DEFAULT_DIR {
            return Err(ParseError::Invalid(
                "top-level settings in _default/hosts.toml need a server".into(),
            ));
        }
        let host = if dir_name == DOCKER_HUB {
            format!("https://{DOCKER_HUB_HOST}")
        } else {
            format!("https://{dir_name}")
        };
        out.server = Some(endpoint(&host, &top, dir).map_err(ParseError::Invalid)?);
    }
    // containerd tries mirrors in file order (`toml`'s `preserve_order` keeps it).
    for (url, table) in raw.host {
        let settings: RawSettings = table
            .try_into()
            .map_err(|e: toml::de::Error| ParseError::Invalid(format!("[host.{url:?}]: {e}")))?;
        refuse_unsupported(&settings)
            .map_err(|p| ParseError::Invalid(format!("[host.{url:?}]: {p}")))?;
        let mut e = endpoint(&url, &settings, dir)
            .map_err(|p| ParseError::Invalid(format!("[host.{url:?}]: {p}")))?;
        e.mirror = true;
        out.mirrors.push(e);
    }
    Ok(out)
}

/// containerd's keys that Skiff does not honour, at the top level or in a `[host]` table:
/// refused rather than ignored.
fn refuse_unsupported(s: &RawSettings) -> Result<(), String> {
    if s.client.is_some() {
        return Err("client certificates (`client`) are not supported".into());
    }
    if s.header.is_some() {
        return Err("extra request headers (`header`) are not supported".into());
    }
    if s.dial_timeout.is_some() {
        return Err("`dial_timeout` is not supported".into());
    }
    Ok(())
}

fn endpoint(url: &str, s: &RawSettings, dir: &Path) -> Result<Endpoint, String> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !valid_domain(host) {
        return Err(format!("{url:?} has no valid host[:port]"));
    }
    if path.contains(['?', '#']) {
        return Err(format!("{url:?} must not have a query or fragment"));
    }
    let path = path.trim_end_matches('/');
    let path = if s.override_path.unwrap_or(false) {
        if path.is_empty() {
            return Err(format!("{url:?}: override_path needs a path in the URL"));
        }
        path.to_owned()
    } else {
        format!("{path}/v2")
    };
    let (mut pull, mut resolve) = (true, true);
    if let Some(caps) = &s.capabilities {
        (pull, resolve) = (false, false);
        for c in caps {
            match c.as_str() {
                "pull" => pull = true,
                "resolve" => resolve = true,
                "push" => {}
                other => return Err(format!("unknown capability {other:?}")),
            }
        }
        if !pull && !resolve {
            return Err("capabilities give neither pull nor resolve".into());
        }
    }
    let ca = match &s.ca {
        None => Vec::new(),
        Some(StringOrList::One(p)) => vec![p.clone()],
        Some(StringOrList::Many(ps)) => ps.clone(),
    };
    let mut ca_paths = Vec::new();
    for p in ca {
        let path = dir.join(&p);
        let pem = fs::read(&path).map_err(|e| format!("ca {}: {e}", path.display()))?;
        if crate::runtime::registry::parse_pem(&pem).map_or(true, |v| v.is_empty()) {
            return Err(format!("ca {} holds no PEM certificate", path.display()));
        }
        ca_paths.push(path);
    }
    Ok(Endpoint {
        scheme,
        host: host.to_owned(),
        path,
        pull,
        resolve,
        skip_verify: s.skip_verify.unwrap_or(false),
        ca: ca_paths,
        mirror: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "skiff-hosts-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (name, text) in files {
            let p = dir.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn without_configuration_docker_hub_is_registry_1_over_https() {
        let hosts = RegistryHosts::default();
        let e = hosts.endpoints("docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].url("library/busybox/manifests/latest"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
        assert_eq!(
            hosts.endpoints("quay.io:8443")[0].url("x/blobs/d"),
            "https://quay.io:8443/v2/x/blobs/d"
        );
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let dir = dir_with(&[(
            "docker.io/hosts.toml",
            r#"
server = "https://registry-1.docker.io"
[host."http://10.250.0.9:5000"]
  capabilities = ["pull"]
[host."http://10.250.0.2:5000"]
  capabilities = ["pull", "resolve"]
[host."https://m.example/prefix/v2/x"]
  override_path = true
  skip_verify = true
"#,
        )]);
        let hosts = RegistryHosts::load(&dir).unwrap();
        let e = hosts.endpoints("docker.io");
        let urls: Vec<String> = e.iter().map(|e| e.url("a/manifests/t")).collect();
        assert_eq!(
            urls,
            [
                "http://10.250.0.9:5000/v2/a/manifests/t",
                "http://10.250.0.2:5000/v2/a/manifests/t",
                "https://m.example/prefix/v2/x/a/manifests/t",
                "https://registry-1.docker.io/v2/a/manifests/t",
            ]
        );
        assert!(e[0].pull && !e[0].resolve && e[0].mirror);
        assert!(e[2].skip_verify);
        assert!(!e[3].mirror);
        // Another registry has no directory and no _default: itself over https.
        assert_eq!(hosts.endpoints("quay.io")[0].host, "quay.io");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_plain_http_server_and_the_default_directory() {
        let dir = dir_with(&[
            (
                "10.250.0.2:5000/hosts.toml",
                "server = \"http://10.250.0.2:5000\"\n",
            ),
            (
                "_default/hosts.toml",
                "server = \"https://fallback.example\"\n",
            ),
        ]);
        let hosts = RegistryHosts::load(&dir).unwrap();
        let e = &hosts.endpoints("10.250.0.2:5000")[0];
        assert_eq!(e.scheme, Scheme::Http);
        assert_eq!(
            e.url("app/blobs/x"),
            "http://10.250.0.2:5000/v2/app/blobs/x"
        );
        assert_eq!(hosts.endpoints("quay.io")[0].host, "fallback.example");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_refuse_what_is_not_honoured() {
        for (text, expect) in [
            ("server = 5", "hosts.toml"),
            ("server = \"ftp://x\"", "not an http:// or https:// URL"),
            (
                "[host.\"https://m\"]\n client = \"c.pem\"",
                "client certificates",
            ),
            (
                "[host.\"https://m\"]\n capabilities = [\"fly\"]",
                "unknown capability",
            ),
            ("[host.\"https://m\"]\n ca = \"nope.pem\"", "nope.pem"),
            ("mirrors = []", "unknown field"),
        ] {
            let dir = dir_with(&[("reg.example/hosts.toml", text)]);
            let err = RegistryHosts::load(&dir).unwrap_err();
            let shown = format!("{err}");
            assert!(shown.contains("reg.example/hosts.toml"), "{shown}");
            assert!(shown.contains(expect), "{text}: {shown}");
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn hosts_are_checked() {
        assert!(valid_domain("10.250.0.2:5000"));
        assert!(valid_domain("registry-1.docker.io"));
        assert!(!valid_domain("a/b"));
        assert!(!valid_domain("x:0"));
        assert!(!valid_domain(""));
    }

    #[test]
    fn unhonoured_keys_are_refused_at_the_top_level_with_or_without_a_server() {
        for (text, expect) in [
            ("dial_timeout = \"3s\"", "`dial_timeout` is not supported"),
            ("client = \"c.pem\"", "client certificates"),
            ("[header]\n x-a = \"b\"", "extra request headers"),
            (
                "server = \"https://reg.example\"\ndial_timeout = \"3s\"",
                "`dial_timeout` is not supported",
            ),
            (
                "[host.\"https://m\"]\n dial_timeout = \"3s\"",
                "[host.\"https://m\"]: `dial_timeout` is not supported",
            ),
            (
                "[host.\"https://m\"]\n header = { x-a = \"b\" }",
                "extra request headers",
            ),
        ] {
            for registry in ["reg.example", DEFAULT_DIR] {
                let dir = dir_with(&[(&format!("{registry}/hosts.toml"), text)]);
                let err = RegistryHosts::load(&dir).unwrap_err();
                let shown = format!("{err}");
                assert!(shown.contains(expect), "{registry}: {text}: {shown}");
                fs::remove_dir_all(dir).unwrap();
            }
        }
    }

    #[test]
    fn a_bracketed_ipv6_registry_is_configured_like_any_other() {
        let dir = dir_with(&[(
            "[fd00::2]:5000/hosts.toml",
            "server = \"http://[fd00::2]:5000\"\n",
        )]);
        let hosts = RegistryHosts::load(&dir).unwrap();
        let e = &hosts.endpoints("[fd00::2]:5000")[0];
        assert_eq!(e.url("app/blobs/x"), "http://[fd00::2]:5000/v2/app/blobs/x");
        fs::remove_dir_all(dir).unwrap();
    }
}
