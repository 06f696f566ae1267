//! Where skiffctl finds its server, credentials and default namespace: the config file, then
//! `SKIFF_*` environment variables, then flags, each overriding the one before.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use skiff_api::client::ClientConfig;

/// The namespace of namespaced objects when nothing else names one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The environment variables skiffctl reads, passed in explicitly so that precedence is testable
/// without changing the process's own environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process's environment (variables that are not Unicode are left out).
    pub fn from_process() -> Env {
        std::env::vars().collect()
    }

    /// A variable's value; an empty variable counts as unset.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Env {
        Env {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Connection settings given as flags: the highest precedence.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlags {
    /// Config file [default: $SKIFF_CONFIG, else $HOME/.skiff/config].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API server address (http://HOST:PORT, https://HOST:PORT or unix:///PATH) [env: SKIFF_SERVER].
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token [env: SKIFF_TOKEN].
    #[arg(long, global = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate to verify an https:// server with.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The name the server's certificate is for, when it is not the host in the address.
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Namespace of namespaced objects [env: SKIFF_NAMESPACE; default: the config file's, else "default"].
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// The config file, as written by people: every field optional, unknown fields refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub token: Option<String>,
    /// Relative to the config file's directory.
    pub token_file: Option<PathBuf>,
    /// Relative to the config file's directory.
    pub ca_cert: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// The default namespace.
    pub namespace: Option<String>,
}

/// Everything a command needs to reach the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    pub client: ClientConfig,
    /// Where namespaced objects without a namespace go.
    pub namespace: String,
    /// Whether `namespace` came from `-n`: manifests naming another namespace are then refused.
    pub namespace_from_flag: bool,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named with `--config` does not exist.
    #[error("config file {} does not exist", path.display())]
    Missing { path: PathBuf },
    /// The config file exists but could not be read.
    #[error("reading config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The config file is not the expected YAML.
    #[error("malformed config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    /// The config file sets both `token` and `tokenFile`.
    #[error("config file {}: set either token or tokenFile, not both", path.display())]
    TokenTwice { path: PathBuf },
    /// A token file could not be read.
    #[error("reading token file {}: {source}", path.display())]
    ReadToken {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A token file holds nothing.
    #[error("token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    /// No layer names a server.
    #[error(
        "no API server configured: set `server:` in {file}, or set SKIFF_SERVER, or pass --server (for example --server http://127.0.0.1:6443)"
    )]
    NoServer { file: String },
    /// No layer gives a token.
    #[error(
        "no token configured for {server}: set `token:` or `tokenFile:` in {file}, or set SKIFF_TOKEN, or pass --token or --token-file"
    )]
    NoToken { server: String, file: String },
}

/// Where the config file is: `--config`, else `$SKIFF_CONFIG`, else `$HOME/.skiff/config`; and
/// whether it was named explicitly with `--config` (then it must exist).
pub fn config_path(flags: &ConfigFlags, env: &Env) -> Option<(PathBuf, bool)> {
    if let Some(p) = &flags.config {
        return Some((p.clone(), true));
    }
    if let Some(p) = env.get("SKIFF_CONFIG") {
        return Some((PathBuf::from(p), false));
    }
    env.get("HOME")
        .map(|home| (Path::new(home).join(".skiff").join("config"), false))
}

/// Reads a config file; `Ok(None)` when it does not exist and did not have to.
pub fn read_config_file(path: &Path, must_exist: bool) -> Result<Option<ConfigFile>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !must_exist => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse_config_file(path, &text).map(Some)
}

/// Parses a config file's text; an empty file is an empty config.
pub fn parse_config_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    if text.trim().is_empty() {
        return Ok(ConfigFile::default());
    }
    let mut file: ConfigFile =
        serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if file.token.is_some() && file.token_file.is_some() {
        return Err(ConfigError::TokenTwice {
            path: path.to_owned(),
        });
    }
    // Paths in the file are relative to the file, as in a kubeconfig.
    let dir = path.parent().unwrap_or(Path::new(""));
    for p in [&mut file.token_file, &mut file.ca_cert]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(file)
}

/// Reads the config file and combines it with the environment and the flags.
pub fn load(flags: &ConfigFlags, env: &Env) -> Result<Settings, ConfigError> {
    let path = config_path(flags, env);
    let file = match &path {
        Some((p, must_exist)) => read_config_file(p, *must_exist)?,
        None => None,
    };
    resolve(
        flags,
        env,
        path.as_ref().map(|(p, _)| p.as_path()),
        file.unwrap_or_default(),
    )
}

/// Where a token comes from, in one layer.
enum TokenSource {
    Value(String),
    File(PathBuf),
}

/// Combines the layers: `file` < `env` < `flags`. `path` is the config file's name, for messages.
pub fn resolve(
    flags: &ConfigFlags,
    env: &Env,
    path: Option<&Path>,
    file: ConfigFile,
) -> Result<Settings, ConfigError> {
    let file_name = || {
        path.map_or_else(
            || "$HOME/.skiff/config".to_owned(),
            |p| p.display().to_string(),
        )
    };
    let server = flags
        .server
        .clone()
        .or_else(|| env.get("SKIFF_SERVER").map(str::to_owned))
        .or(file.server)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::NoServer { file: file_name() })?;

    let from_flags = match (&flags.token, &flags.token_file) {
        (Some(t), _) => Some(TokenSource::Value(t.clone())),
        (None, Some(p)) => Some(TokenSource::File(p.clone())),
        (None, None) => None,
    };
    let from_env = env
        .get("SKIFF_TOKEN")
        .map(|t| TokenSource::Value(t.to_owned()));
    let from_file = match (file.token, file.token_file) {
        (Some(t), _) => Some(TokenSource::Value(t)),
        (None, Some(p)) => Some(TokenSource::File(p)),
        (None, None) => None,
    };
    let token = match from_flags.or(from_env).or(from_file) {
        Some(TokenSource::Value(t)) => t,
        Some(TokenSource::File(p)) => read_token(&p)?,
        None => String::new(),
    };
    if token.is_empty() {
        return Err(ConfigError::NoToken {
            server,
            file: file_name(),
        });
    }

    let (namespace, namespace_from_flag) = match &flags.namespace {
        Some(ns) if !ns.is_empty() => (ns.clone(), true),
        _ => (
            env.get("SKIFF_NAMESPACE")
                .map(str::to_owned)
                .or(file.namespace)
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
            false,
        ),
    };

    let mut client = ClientConfig::new(server, token);
    client.ca_cert = flags.ca_cert.clone().or(file.ca_cert);
    client.tls_server_name = flags.tls_server_name.clone().or(file.tls_server_name);
    Ok(Settings {
        client,
        namespace,
        namespace_from_flag,
    })
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadToken {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().copied().collect()
    }

    fn file(text: &str) -> ConfigFile {
        parse_config_file(Path::new("/etc/skiff/config"), text).expect("valid config")
    }

    #[test]
    fn the_config_file_alone_configures_everything() {
        let f = file(
            "server: https://api.example:6443\ntoken: t-file\ncaCert: ca.pem\ntlsServerName: api\nnamespace: team-a\n",
        );
        let s = resolve(&ConfigFlags::default(), &Env::default(), None, f).expect("resolves");
        assert_eq!(s.client.server, "https://api.example:6443");
        assert_eq!(s.client.token, "t-file");
        assert_eq!(s.client.ca_cert, Some(PathBuf::from("/etc/skiff/ca.pem")));
        assert_eq!(s.client.tls_server_name.as_deref(), Some("api"));
        assert_eq!(s.namespace, "team-a");
        assert!(!s.namespace_from_flag);
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_the_environment() {
        let f = file("server: http://file:6443\ntoken: t-file\nnamespace: ns-file\n");
        let e = env(&[
            ("SKIFF_SERVER", "http://env:6443"),
            ("SKIFF_TOKEN", "t-env"),
            ("SKIFF_NAMESPACE", "ns-env"),
        ]);
        let s = resolve(&ConfigFlags::default(), &e, None, f.clone()).expect("resolves");
        assert_eq!(
            (
                s.client.server.as_str(),
                s.client.token.as_str(),
                s.namespace.as_str()
            ),
            ("http://env:6443", "t-env", "ns-env")
        );
        assert!(!s.namespace_from_flag);

        let flags = ConfigFlags {
            server: Some("http://flag:6443".into()),
            token: Some("t-flag".into()),
            namespace: Some("ns-flag".into()),
            ..ConfigFlags::default()
        };
        let s = resolve(&flags, &e, None, f).expect("resolves");
        assert_eq!(
            (
                s.client.server.as_str(),
                s.client.token.as_str(),
                s.namespace.as_str()
            ),
            ("http://flag:6443", "t-flag", "ns-flag")
        );
        assert!(s.namespace_from_flag);
    }

    #[test]
    fn a_token_file_flag_overrides_a_token_in_the_environment() {
        let dir = TempDir::new("token_file_flag");
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "t-from-file\n").expect("write token");
        let flags = ConfigFlags {
            server: Some("http://flag:6443".into()),
            token_file: Some(token_path),
            ..ConfigFlags::default()
        };
        let e = env(&[("SKIFF_TOKEN", "t-env")]);
        let s = resolve(&flags, &e, None, ConfigFile::default()).expect("resolves");
        assert_eq!(s.client.token, "t-from-file");
    }

    #[test]
    fn a_token_file_in_the_config_is_read_relative_to_the_config() {
        let dir = TempDir::new("token_file_relative");
        std::fs::write(dir.path().join("token"), "  secret  \n").expect("write token");
        let path = dir.path().join("config");
        std::fs::write(&path, "server: unix:///run/skiff.sock\ntokenFile: token\n")
            .expect("write config");
        let flags = ConfigFlags {
            config: Some(path),
            ..ConfigFlags::default()
        };
        let s = load(&flags, &Env::default()).expect("loads");
        assert_eq!(s.client.token, "secret");
        assert_eq!(s.namespace, DEFAULT_NAMESPACE);
    }

    #[test]
    fn the_config_file_is_found_through_skiff_config_then_home() {
        let flags = ConfigFlags::default();
        let e = env(&[("SKIFF_CONFIG", "/a/config"), ("HOME", "/home/u")]);
        assert_eq!(
            config_path(&flags, &e),
            Some((PathBuf::from("/a/config"), false))
        );
        let e = env(&[("HOME", "/home/u")]);
        assert_eq!(
            config_path(&flags, &e),
            Some((PathBuf::from("/home/u/.skiff/config"), false))
        );
        let flags = ConfigFlags {
            config: Some("/b/config".into()),
            ..ConfigFlags::default()
        };
        assert_eq!(
            config_path(&flags, &e),
            Some((PathBuf::from("/b/config"), true))
        );
        assert_eq!(config_path(&ConfigFlags::default(), &Env::default()), None);
    }

    #[test]
    fn a_missing_default_config_file_is_fine_when_env_configures_the_server() {
        let dir = TempDir::new("missing_default");
        let e = env(&[
            ("HOME", dir.path().to_str().expect("utf-8 temp path")),
            ("SKIFF_SERVER", "http://127.0.0.1:6443"),
            ("SKIFF_TOKEN", "t"),
        ]);
        let s = load(&ConfigFlags::default(), &e).expect("loads");
        assert_eq!(s.client.server, "http://127.0.0.1:6443");
    }

    #[test]
    fn a_missing_config_file_named_by_flag_is_an_error() {
        let flags = ConfigFlags {
            config: Some("/nonexistent/skiff/config".into()),
            server: Some("http://x:1".into()),
            token: Some("t".into()),
            ..ConfigFlags::default()
        };
        let err = load(&flags, &Env::default()).expect_err("missing file");
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/skiff/config"));
    }

    #[test]
    fn a_malformed_config_file_is_an_error_naming_the_file() {
        let dir = TempDir::new("malformed");
        let path = dir.path().join("config");
        std::fs::write(&path, "server: [unclosed\n").expect("write");
        let e = env(&[("SKIFF_CONFIG", path.to_str().expect("utf-8"))]);
        let err = load(&ConfigFlags::default(), &e).expect_err("malformed");
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_in_the_config_file_are_refused() {
        let err = parse_config_file(Path::new("/c"), "server: http://x:1\nservr: typo\n")
            .expect_err("unknown field");
        assert!(err.to_string().contains("servr"), "{err}");
    }

    #[test]
    fn token_and_token_file_together_in_the_file_are_refused() {
        let err = parse_config_file(Path::new("/c"), "token: a\ntokenFile: b\n")
            .expect_err("both tokens");
        assert!(matches!(err, ConfigError::TokenTwice { .. }));
    }

    #[test]
    fn no_server_anywhere_says_how_to_configure_one() {
        let err = resolve(
            &ConfigFlags::default(),
            &Env::default(),
            Some(Path::new("/home/u/.skiff/config")),
            ConfigFile::default(),
        )
        .expect_err("no server");
        let text = err.to_string();
        for hint in ["/home/u/.skiff/config", "SKIFF_SERVER", "--server"] {
            assert!(text.contains(hint), "{text} lacks {hint}");
        }
    }

    #[test]
    fn no_token_anywhere_is_an_error() {
        let flags = ConfigFlags {
            server: Some("http://x:1".into()),
            ..ConfigFlags::default()
        };
        let err =
            resolve(&flags, &Env::default(), None, ConfigFile::default()).expect_err("no token");
        assert!(matches!(err, ConfigError::NoToken { .. }));
        assert!(err.to_string().contains("SKIFF_TOKEN"));
    }

    #[test]
    fn an_empty_environment_variable_counts_as_unset() {
        let f = file("server: http://file:1\ntoken: t\n");
        let e = env(&[("SKIFF_SERVER", ""), ("SKIFF_NAMESPACE", "")]);
        let s = resolve(&ConfigFlags::default(), &e, None, f).expect("resolves");
        assert_eq!(s.client.server, "http://file:1");
        assert_eq!(s.namespace, DEFAULT_NAMESPACE);
    }

    #[test]
    fn an_empty_config_file_is_an_empty_config() {
        assert_eq!(file("\n\n"), ConfigFile::default());
    }
}
