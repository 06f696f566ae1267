//! `create`: a Namespace, ConfigMap or Secret from arguments, as `kubectl create` makes them
//! (the same key rules, the same sources, the same messages).

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use base64::Engine;
use serde::Serialize;
use skiff_api::{
    Kind, Object, ObjectMeta,
    kinds::{
        Bytes, ConfigMap, DOCKER_CONFIG_JSON_KEY, Namespace, SECRET_TYPE_DOCKER_CONFIG_JSON,
        SECRET_TYPE_TLS, Secret, TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY,
    },
    validate::config_key,
};

use crate::{
    Context, Io,
    cli::{
        CreateCommand, CreateConfigMapArgs, CreateDockerRegistryArgs, CreateOutput,
        CreateSecretCommand, CreateSecretGenericArgs, CreateTlsArgs, DataSources, DryRun,
        OutputFormat,
    },
    error::Result,
    output,
    resource::name_of,
};

/// Why the arguments do not make an object (kubectl's words).
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// `--from-literal` without `=`, or starting with it.
    #[error("invalid literal source {source_arg}, expected key=value")]
    Literal { source_arg: String },
    /// `--from-file==path`.
    #[error("key name for file path {path} missing")]
    FileKeyMissing { path: String },
    /// `--from-file=key=`.
    #[error("file path for key name {key} missing")]
    FilePathMissing { key: String },
    /// `--from-file=a=b=c`.
    #[error("key names or file paths cannot contain '='")]
    FileSourceEquals,
    /// `--from-file=key=dir/`.
    #[error("cannot give a key name for a directory path")]
    DirectoryKey,
    /// A source file or directory could not be read.
    #[error("error reading {}: {}", path.display(), go_io_text(source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A ConfigMap key breaks the key rules.
    #[error("{key:?} is not a valid key name for a ConfigMap: {problems}")]
    ConfigMapKey { key: String, problems: String },
    /// A Secret key breaks the key rules.
    #[error("{key:?} is not valid key name for a Secret {problems}")]
    SecretKey { key: String, problems: String },
    /// The same ConfigMap key from two sources.
    #[error(
        "cannot add key {key:?}, another key by that name already exists in {bag} for ConfigMap {name:?}"
    )]
    ConfigMapDuplicate {
        key: String,
        bag: &'static str,
        name: String,
    },
    /// The same Secret key from two sources.
    #[error("cannot add key {key}, another key by that name already exists")]
    SecretDuplicate { key: String },
    /// `--from-env-file` with other sources.
    #[error("from-env-file cannot be combined with from-file or from-literal")]
    EnvFileCombined,
    /// An env file line that is not UTF-8.
    #[error("env file {path} contains invalid utf8 bytes at line {line}")]
    EnvFileUtf8 { path: String, line: usize },
    /// An env file key that is not an environment variable name.
    #[error("{key:?} is not a valid key name: {ENV_NAME_SYNTAX}")]
    EnvFileKey { key: String },
    /// `create secret docker-registry` without a required flag.
    #[error("--{flag} must be specified")]
    DockerFlag { flag: &'static str },
    /// `create secret tls` without --cert or --key.
    #[error("key and cert must be specified")]
    TlsFiles,
    /// The certificate or key file is not the PEM it should be.
    #[error("tls: {0}")]
    Pem(PemProblem),
}

/// What is wrong with a TLS certificate or key file (Go's `tls.X509KeyPair` words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemProblem {
    #[error("failed to find any PEM data in certificate input")]
    NoCertificatePem,
    #[error(
        "failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched"
    )]
    KeyInsteadOfCertificate,
    #[error(
        "failed to find \"CERTIFICATE\" PEM block in certificate input after skipping PEM blocks of the following types: [{}]",
        .0.join(" ")
    )]
    NoCertificateBlock(Vec<String>),
    #[error("failed to find any PEM data in key input")]
    NoKeyPem,
    #[error("found a certificate rather than a key in the PEM for the private key")]
    CertificateInsteadOfKey,
    #[error(
        "failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: [{}]",
        .0.join(" ")
    )]
    NoKeyBlock(Vec<String>),
}

/// Kubernetes' message for a name that is not an environment variable name.
const ENV_NAME_SYNTAX: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')";

/// Go's text for the common file errors, as kubectl shows them.
fn go_io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

pub async fn run(ctx: Context<'_>, command: &CreateCommand, io: &mut Io<'_>) -> Result<()> {
    let (object, out) = match command {
        CreateCommand::Namespace { name } => {
            let ns = Namespace {
                metadata: meta(name),
                ..Namespace::default()
            };
            (ns.into_object(), CreateOutput::default())
        }
        CreateCommand::ConfigMap(a) => (config_map(a)?.into_object(), a.out),
        CreateCommand::Secret(CreateSecretCommand::Generic(a)) => {
            (generic_secret(a)?.into_object(), a.out)
        }
        CreateCommand::Secret(CreateSecretCommand::DockerRegistry(a)) => {
            (docker_registry_secret(a)?.into_object(), a.out)
        }
        CreateCommand::Secret(CreateSecretCommand::Tls(a)) => (tls_secret(a)?.into_object(), a.out),
    };
    create(ctx, object, out, io).await
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.to_owned(),
        ..ObjectMeta::default()
    }
}

/// Sends the object (or, for a client dry run, only prints it) and reports as kubectl does.
async fn create(
    ctx: Context<'_>,
    mut object: Object,
    out: CreateOutput,
    io: &mut Io<'_>,
) -> Result<()> {
    let (shown, suffix) = match out.dry_run {
        DryRun::Client => {
            let settings = ctx.settings()?;
            // As kubectl: the namespace appears only when it was asked for.
            if object.info().namespaced && settings.namespace_from_flag {
                object.meta_mut().namespace = settings.namespace;
            }
            (object, " (dry run)")
        }
        DryRun::None => {
            let (settings, client) = ctx.connect().await?;
            if object.info().namespaced {
                object.meta_mut().namespace = settings.namespace;
            }
            (client.create_object(&object).await?, "")
        }
    };
    match out.output {
        Some(OutputFormat::Yaml) => io
            .out
            .write_all(output::yaml(&shown.to_value())?.as_bytes())?,
        Some(OutputFormat::Json) => io
            .out
            .write_all(output::json(&shown.to_value()).as_bytes())?,
        Some(OutputFormat::Name) => writeln!(io.out, "{}", name_of(&shown))?,
        Some(OutputFormat::Wide) | None => {
            writeln!(io.out, "{} created{suffix}", name_of(&shown))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sources

/// One key and its bytes, from wherever.
type Entry = (String, Vec<u8>);

/// `KEY=VALUE`, split at the first '='.
fn parse_literal(source: &str) -> Result<(String, String), CreateError> {
    match source.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(CreateError::Literal {
            source_arg: source.to_owned(),
        }),
    }
}

/// `[KEY=]PATH`: the key (the file's base name when not given) and the path.
fn parse_file_source(source: &str) -> Result<(Option<String>, PathBuf), CreateError> {
    match source.matches('=').count() {
        0 => Ok((None, PathBuf::from(source))),
        1 => {
            let (key, path) = source.split_once('=').unwrap_or_default();
            if key.is_empty() {
                Err(CreateError::FileKeyMissing { path: path.into() })
            } else if path.is_empty() {
                Err(CreateError::FilePathMissing { key: key.into() })
            } else {
                Ok((Some(key.to_owned()), PathBuf::from(path)))
            }
        }
        _ => Err(CreateError::FileSourceEquals),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CreateError> {
    std::fs::read(path).map_err(|source| CreateError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The entries of one `--from-file`: a file under its key, or each regular file of a
/// directory whose name is a valid key (others are skipped, as kubectl documents).
fn file_entries(source: &str) -> Result<Vec<Entry>, CreateError> {
    let (key, path) = parse_file_source(source)?;
    let read_err = |source| CreateError::Read {
        path: path.clone(),
        source,
    };
    let meta = std::fs::metadata(&path).map_err(read_err)?;
    if !meta.is_dir() {
        let key = key.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| source.to_owned())
        });
        return Ok(vec![(key, read(&path)?)]);
    }
    if key.is_some() {
        return Err(CreateError::DirectoryKey);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        // The entry itself, not what a symlink points at: only regular files count.
        if entry.file_type().map_err(read_err)?.is_file()
            && let Some(name) = entry.file_name().to_str()
            && config_key(name).is_empty()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = read(&path.join(&n))?;
            Ok((n, data))
        })
        .collect()
}

/// A name Kubernetes accepts for an environment variable.
fn is_env_var_name(s: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphabetic() || matches!(c, b'-' | b'.' | b'_');
    s.bytes().next().is_some_and(word) && s.bytes().all(|c| word(c) || c.is_ascii_digit())
}

/// The entries of an env file, as kubectl reads one: a UTF-8 byte order mark at the start is
/// skipped, leading blanks are trimmed, blank and `#` lines skipped, `KEY=VALUE` split at the
/// first '=', and a line of a key alone takes the value from `env`.
fn env_file_entries(
    path: &str,
    text: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Entry>, CreateError> {
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let mut entries = Vec::new();
    for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| CreateError::EnvFileUtf8 {
            path: path.to_owned(),
            line: i + 1,
        })?;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (line, None),
        };
        if !is_env_var_name(key) {
            return Err(CreateError::EnvFileKey { key: key.into() });
        }
        let value = value.or_else(|| env(key)).unwrap_or_default();
        entries.push((key.to_owned(), value.into_bytes()));
    }
    Ok(entries)
}

/// Every entry of the sources, in kubectl's order: literals, files, then env files.
fn entries(s: &DataSources) -> Result<Vec<Entry>, CreateError> {
    if !s.env_files.is_empty() && (!s.files.is_empty() || !s.literals.is_empty()) {
        return Err(CreateError::EnvFileCombined);
    }
    let mut out = Vec::new();
    for l in &s.literals {
        let (k, v) = parse_literal(l)?;
        out.push((k, v.into_bytes()));
    }
    for f in &s.files {
        out.extend(file_entries(f)?);
    }
    for path in &s.env_files {
        let text = read(Path::new(path))?;
        let env = |k: &str| std::env::var(k).ok();
        out.extend(env_file_entries(path, &text, &env)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Objects

/// A ConfigMap: text under `data`, bytes that are not UTF-8 (from files) under `binaryData`.
pub fn config_map(a: &CreateConfigMapArgs) -> Result<ConfigMap, CreateError> {
    let mut cm = ConfigMap {
        metadata: meta(&a.name),
        ..ConfigMap::default()
    };
    for (key, bytes) in entries(&a.sources)? {
        let problems = config_key(&key);
        if !problems.is_empty() {
            return Err(CreateError::ConfigMapKey {
                key,
                problems: problems.join(","),
            });
        }
        for (bag, taken) in [
            ("Data", cm.data.contains_key(&key)),
            ("BinaryData", cm.binary_data.contains_key(&key)),
        ] {
            if taken {
                return Err(CreateError::ConfigMapDuplicate {
                    key,
                    bag,
                    name: a.name.clone(),
                });
            }
        }
        match String::from_utf8(bytes) {
            Ok(text) => {
                cm.data.insert(key, text);
            }
            Err(e) => {
                cm.binary_data.insert(key, Bytes(e.into_bytes()));
            }
        }
    }
    Ok(cm)
}

fn add_secret_key(s: &mut Secret, key: String, bytes: Vec<u8>) -> Result<(), CreateError> {
    let problems = config_key(&key);
    if !problems.is_empty() {
        return Err(CreateError::SecretKey {
            key,
            problems: problems.join(";"),
        });
    }
    if s.data.contains_key(&key) {
        return Err(CreateError::SecretDuplicate { key });
    }
    s.data.insert(key, Bytes(bytes));
    Ok(())
}

/// A Secret of the given type (Opaque by default) from the sources.
pub fn generic_secret(a: &CreateSecretGenericArgs) -> Result<Secret, CreateError> {
    let mut s = Secret {
        metadata: meta(&a.name),
        type_: a.type_.clone().unwrap_or_default(),
        ..Secret::default()
    };
    for (key, bytes) in entries(&a.sources)? {
        add_secret_key(&mut s, key, bytes)?;
    }
    Ok(s)
}

/// One registry's entry of a `~/.docker/config.json`, in the field order Docker writes.
#[derive(Debug, Serialize)]
struct DockerConfigEntry<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    username: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    password: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    email: &'a str,
    /// base64 of `username:password`, what Docker and containerd read.
    #[serde(skip_serializing_if = "String::is_empty")]
    auth: String,
}

#[derive(Debug, Serialize)]
struct DockerConfigJson<'a> {
    auths: BTreeMap<&'a str, DockerConfigEntry<'a>>,
}

/// The `.dockerconfigjson` kubectl writes for one registry.
pub fn docker_config_json(server: &str, username: &str, password: &str, email: &str) -> Vec<u8> {
    let entry = DockerConfigEntry {
        username,
        password,
        email,
        auth: base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")),
    };
    let config = DockerConfigJson {
        auths: [(server, entry)].into(),
    };
    serde_json::to_vec(&config).unwrap_or_default()
}

/// A `kubernetes.io/dockerconfigjson` Secret for one registry.
pub fn docker_registry_secret(a: &CreateDockerRegistryArgs) -> Result<Secret, CreateError> {
    let required = |v: &Option<String>, flag: &'static str| match v.as_deref() {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => Err(CreateError::DockerFlag { flag }),
    };
    let username = required(&a.docker_username, "docker-username")?;
    let password = required(&a.docker_password, "docker-password")?;
    if a.docker_server.is_empty() {
        return Err(CreateError::DockerFlag {
            flag: "docker-server",
        });
    }
    let email = a.docker_email.clone().unwrap_or_default();
    let json = docker_config_json(&a.docker_server, &username, &password, &email);
    Ok(Secret {
        metadata: meta(&a.name),
        type_: SECRET_TYPE_DOCKER_CONFIG_JSON.to_owned(),
        data: [(DOCKER_CONFIG_JSON_KEY.to_owned(), Bytes(json))].into(),
        ..Secret::default()
    })
}

/// The types of the PEM blocks in `text` whose body is base64, in order (what Go's
/// `pem.Decode` finds; a block with broken base64 is not a block to it either).
fn pem_blocks(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|r| r.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {kind}-----");
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            if l == end {
                closed = true;
                break;
            }
            // Headers (`Proc-Type: 4,ENCRYPTED`) are not part of the body.
            if !l.contains(':') {
                body.push_str(l);
            }
        }
        if closed
            && base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .is_ok()
        {
            blocks.push(kind.to_owned());
        }
    }
    blocks
}

/// Checks a certificate and key pair's PEM as Go's `tls.X509KeyPair` does before it parses
/// the DER inside: a CERTIFICATE block in the one, a `... PRIVATE KEY` block in the other.
pub fn check_key_pair(cert: &[u8], key: &[u8]) -> Result<(), PemProblem> {
    let cert_blocks = pem_blocks(cert);
    if !cert_blocks.iter().any(|b| b == "CERTIFICATE") {
        return Err(if cert_blocks.is_empty() {
            PemProblem::NoCertificatePem
        } else if cert_blocks.iter().any(|b| b.ends_with("PRIVATE KEY")) {
            PemProblem::KeyInsteadOfCertificate
        } else {
            PemProblem::NoCertificateBlock(cert_blocks)
        });
    }
    let key_blocks = pem_blocks(key);
    let is_key = |b: &String| b == "PRIVATE KEY" || b.ends_with(" PRIVATE KEY");
    if !key_blocks.iter().any(is_key) {
        return Err(if key_blocks.is_empty() {
            PemProblem::NoKeyPem
        } else if key_blocks.iter().any(|b| b == "CERTIFICATE") {
            PemProblem::CertificateInsteadOfKey
        } else {
            PemProblem::NoKeyBlock(key_blocks)
        });
    }
    Ok(())
}

/// A `kubernetes.io/tls` Secret from PEM files.
pub fn tls_secret(a: &CreateTlsArgs) -> Result<Secret, CreateError> {
    let (Some(cert_path), Some(key_path)) = (&a.cert, &a.key) else {
        return Err(CreateError::TlsFiles);
    };
    let cert = read(cert_path)?;
    let key = read(key_path)?;
    check_key_pair(&cert, &key).map_err(CreateError::Pem)?;
    Ok(Secret {
        metadata: meta(&a.name),
        type_: SECRET_TYPE_TLS.to_owned(),
        data: [
            (TLS_CERT_KEY.to_owned(), Bytes(cert)),
            (TLS_PRIVATE_KEY_KEY.to_owned(), Bytes(key)),
        ]
        .into(),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{cli::Command, testutil::TempDir};

    fn parse(args: &[&str]) -> CreateCommand {
        let cli = crate::Cli::try_parse_from(
            ["skiffctl", "create"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .expect("parses");
        match cli.command {
            Command::Create(c) => c,
            other => panic!("not create: {other:?}"),
        }
    }

    fn cm_args(args: &[&str]) -> CreateConfigMapArgs {
        match parse(&[&["configmap"], args].concat()) {
            CreateCommand::ConfigMap(a) => a,
            other => panic!("not configmap: {other:?}"),
        }
    }

    fn secret_args(args: &[&str]) -> CreateSecretGenericArgs {
        match parse(&[&["secret", "generic"], args].concat()) {
            CreateCommand::Secret(CreateSecretCommand::Generic(a)) => a,
            other => panic!("not secret generic: {other:?}"),
        }
    }

    fn err_text<T: std::fmt::Debug>(r: Result<T, CreateError>) -> String {
        r.expect_err("an error").to_string()
    }

    #[test]
    fn create_parses_kubectl_style_configmap_and_secret_arguments() {
        let a = cm_args(&[
            "app",
            "--from-literal=a=b=c",
            "--from-file=conf=/etc/x",
            "--dry-run=client",
            "-o",
            "yaml",
        ]);
        assert_eq!(a.name, "app");
        assert_eq!(a.sources.literals, ["a=b=c"]);
        assert_eq!(a.sources.files, ["conf=/etc/x"]);
        assert_eq!(a.out.dry_run, DryRun::Client);
        assert_eq!(a.out.output, Some(OutputFormat::Yaml));
        assert!(matches!(parse(&["cm", "x"]), CreateCommand::ConfigMap(_)));
        assert_eq!(cm_args(&["x", "--dry-run"]).out.dry_run, DryRun::Client);
        assert_eq!(cm_args(&["x"]).out.dry_run, DryRun::None);
        let s = secret_args(&["db", "--type", "example.com/x", "--from-env-file", "e.env"]);
        assert_eq!(s.type_.as_deref(), Some("example.com/x"));
        assert_eq!(s.sources.env_files, ["e.env"]);
        let CreateCommand::Secret(CreateSecretCommand::DockerRegistry(d)) = parse(&[
            "secret",
            "docker-registry",
            "reg",
            "--docker-username=u",
            "--docker-password=p",
        ]) else {
            panic!("not docker-registry");
        };
        assert_eq!(d.docker_server, "https://index.docker.io/v1/");
        assert!(matches!(
            parse(&["secret", "tls", "t", "--cert", "c.pem", "--key", "k.pem"]),
            CreateCommand::Secret(CreateSecretCommand::Tls(_))
        ));
        assert!(
            crate::Cli::try_parse_from(["skiffctl", "create", "secret", "opaque", "x"]).is_err()
        );
    }

    #[test]
    fn literal_and_file_sources_are_split_as_kubectl_splits_them() {
        assert_eq!(
            parse_literal("k=v=w").ok(),
            Some(("k".into(), "v=w".into()))
        );
        assert_eq!(parse_literal("k=").ok(), Some(("k".into(), String::new())));
        assert_eq!(
            err_text(parse_literal("=v")),
            "invalid literal source =v, expected key=value"
        );
        assert_eq!(
            err_text(parse_literal("novalue")),
            "invalid literal source novalue, expected key=value"
        );
        assert_eq!(
            parse_file_source("dir/app.conf").ok(),
            Some((None, PathBuf::from("dir/app.conf")))
        );
        assert_eq!(
            parse_file_source("k=dir/app.conf").ok(),
            Some((Some("k".into()), PathBuf::from("dir/app.conf")))
        );
        assert_eq!(
            err_text(parse_file_source("=p")),
            "key name for file path p missing"
        );
        assert_eq!(
            err_text(parse_file_source("k=")),
            "file path for key name k missing"
        );
        assert_eq!(
            err_text(parse_file_source("a=b=c")),
            "key names or file paths cannot contain '='"
        );
    }

    #[test]
    fn configmap_from_files_puts_text_in_data_and_other_bytes_in_binary_data() {
        let dir = TempDir::new("cm-files");
        let d = dir.path();
        std::fs::write(d.join("app.conf"), "port=80\n").expect("write");
        std::fs::write(d.join("logo.bin"), [0xff, 0x00, 0xfe]).expect("write");
        std::fs::write(d.join("bad name"), "skipped").expect("write");
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        std::fs::write(d.join("sub").join("inner"), "skipped").expect("write");
        let dir_arg = format!("--from-file={}", d.display());
        let cm = config_map(&cm_args(&["app", &dir_arg, "--from-literal=mode=prod"]))
            .expect("a configmap");
        assert_eq!(cm.data.keys().collect::<Vec<_>>(), ["app.conf", "mode"]);
        assert_eq!(cm.data["app.conf"], "port=80\n");
        assert_eq!(cm.binary_data["logo.bin"].0, [0xff, 0x00, 0xfe]);

        let renamed = format!("--from-file=main.conf={}", d.join("app.conf").display());
        let cm = config_map(&cm_args(&["app", &renamed])).expect("a configmap");
        assert_eq!(cm.data.keys().collect::<Vec<_>>(), ["main.conf"]);

        let keyed_dir = format!("--from-file=k={}", d.display());
        assert_eq!(
            err_text(config_map(&cm_args(&["app", &keyed_dir]))),
            "cannot give a key name for a directory path"
        );
        let missing = format!("--from-file={}", d.join("nope").display());
        assert_eq!(
            err_text(config_map(&cm_args(&["app", &missing]))),
            format!(
                "error reading {}: no such file or directory",
                d.join("nope").display()
            )
        );
        let bad_file = format!("--from-file={}", d.join("bad name").display());
        assert!(
            err_text(config_map(&cm_args(&["app", &bad_file])))
                .starts_with("\"bad name\" is not a valid key name for a ConfigMap: a valid config key must consist")
        );
    }

    #[test]
    fn duplicate_and_invalid_keys_are_refused_with_kubectls_messages() {
        assert_eq!(
            err_text(config_map(&cm_args(&[
                "app",
                "--from-literal=a=1",
                "--from-literal=a=2"
            ]))),
            "cannot add key \"a\", another key by that name already exists in Data for ConfigMap \"app\""
        );
        assert_eq!(
            err_text(config_map(&cm_args(&["app", "--from-literal=..x=1"]))),
            "\"..x\" is not a valid key name for a ConfigMap: must not start with '..'"
        );
        assert_eq!(
            err_text(generic_secret(&secret_args(&[
                "s",
                "--from-literal=a=1",
                "--from-literal=a=2"
            ]))),
            "cannot add key a, another key by that name already exists"
        );
        assert_eq!(
            err_text(generic_secret(&secret_args(&["s", "--from-literal=.=1"]))),
            "\".\" is not valid key name for a Secret must not be '.'"
        );
        assert_eq!(
            err_text(config_map(&cm_args(&[
                "app",
                "--from-literal=a=1",
                "--from-env-file=x.env"
            ]))),
            "from-env-file cannot be combined with from-file or from-literal"
        );
    }

    #[test]
    fn env_files_skip_comments_and_blanks_trim_leading_space_and_read_bare_keys_from_the_env() {
        let text = b"\xef\xbb\xbfA=1\n# comment\n\n   B= two \r\nC=x=y\nFROM_ENV\nUNSET\n";
        let env = |k: &str| (k == "FROM_ENV").then(|| "env-value".to_owned());
        let got: Vec<(String, String)> = env_file_entries("e.env", text, &env)
            .expect("parses")
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap_or_default()))
            .collect();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", " two "),
            ("C", "x=y"),
            ("FROM_ENV", "env-value"),
            ("UNSET", ""),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
        let err = env_file_entries("e.env", b"B = 2\n", &env).map(|_| ());
        assert_eq!(
            err_text(err),
            format!("\"B \" is not a valid key name: {ENV_NAME_SYNTAX}")
        );
        let err = env_file_entries("e.env", b"1BAD=x\n", &env).map(|_| ());
        assert_eq!(
            err_text(err),
            format!("\"1BAD\" is not a valid key name: {ENV_NAME_SYNTAX}")
        );
        let err = env_file_entries("e.env", b"A=1\nB=\xff\n", &env).map(|_| ());
        assert_eq!(
            err_text(err),
            "env file e.env contains invalid utf8 bytes at line 2"
        );
    }

    #[test]
    fn docker_registry_secrets_carry_kubectls_config_json_with_the_auth_field() {
        let CreateCommand::Secret(CreateSecretCommand::DockerRegistry(a)) = parse(&[
            "secret",
            "docker-registry",
            "reg",
            "--docker-server=registry.local:5000",
            "--docker-username=alice",
            "--docker-password=s3cret",
            "--docker-email=a@example.com",
        ]) else {
            panic!("not docker-registry");
        };
        let s = docker_registry_secret(&a).expect("a secret");
        assert_eq!(s.type_, "kubernetes.io/dockerconfigjson");
        let json = String::from_utf8(s.data[".dockerconfigjson"].0.clone()).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"auths":{"registry.local:5000":{"username":"alice","password":"s3cret","email":"a@example.com","auth":"YWxpY2U6czNjcmV0"}}}"#
        );
        let CreateCommand::Secret(CreateSecretCommand::DockerRegistry(a)) = parse(&[
            "secret",
            "docker-registry",
            "reg",
            "--docker-username=alice",
        ]) else {
            panic!("not docker-registry");
        };
        assert_eq!(
            err_text(docker_registry_secret(&a)),
            "--docker-password must be specified"
        );
    }

    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0VSVA==\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n";

    #[test]
    fn tls_secrets_need_a_certificate_block_and_a_private_key_block() {
        assert_eq!(check_key_pair(CERT.as_bytes(), KEY.as_bytes()), Ok(()));
        let cases = [
            (
                "not pem",
                KEY,
                "failed to find any PEM data in certificate input",
            ),
            (
                KEY,
                CERT,
                "failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched",
            ),
            (
                CERT,
                CERT,
                "found a certificate rather than a key in the PEM for the private key",
            ),
            (CERT, "", "failed to find any PEM data in key input"),
            (
                CERT,
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: [PUBLIC KEY]",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                KEY,
                "failed to find any PEM data in certificate input",
            ),
        ];
        for (cert, key, want) in cases {
            let got = check_key_pair(cert.as_bytes(), key.as_bytes()).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()), "{cert:?} / {key:?}");
        }
        let dir = TempDir::new("tls");
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, CERT).expect("write");
        std::fs::write(&k, KEY).expect("write");
        let CreateCommand::Secret(CreateSecretCommand::Tls(a)) = parse(&[
            "secret",
            "tls",
            "web-tls",
            "--cert",
            &c.display().to_string(),
            "--key",
            &k.display().to_string(),
        ]) else {
            panic!("not tls");
        };
        let s = tls_secret(&a).expect("a secret");
        assert_eq!(s.type_, "kubernetes.io/tls");
        assert_eq!(s.data["tls.crt"].0, CERT.as_bytes());
        assert_eq!(s.data["tls.key"].0, KEY.as_bytes());
        let CreateCommand::Secret(CreateSecretCommand::Tls(a)) =
            parse(&["secret", "tls", "web-tls", "--cert", "x"])
        else {
            panic!("not tls");
        };
        assert_eq!(err_text(tls_secret(&a)), "key and cert must be specified");
    }
}
