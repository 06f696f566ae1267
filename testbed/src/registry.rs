//! A real OCI registry for tests and the local cluster: Debian's `docker-registry` (the
//! distribution registry 2.8) in a network namespace of its own, joined to the fabric's bridge
//! at [`REGISTRY_IP`] and listening on port [`REGISTRY_PORT`] (so also on 127.0.0.1 inside its
//! namespace), storing on the filesystem, with htpasswd (bcrypt) authentication when asked.
//!
//! Images go in with Debian's `skopeo`, run inside the registry's namespace and sending to its
//! loopback address ([`push_command`]): nothing is sent from the host's namespace. Nodes reach
//! it over the fabric; [`write_hosts_dir`] writes the registry configuration directory (in
//! containerd's `hosts.toml` format) that `skiff-agent node --registry-config-dir` reads: the
//! registry itself over plain HTTP, and as the mirror of `docker.io`, so that an unchanged
//! manifest's `image: nginx` is pulled from it.
//!
//! [`Registry`] is the test bed's guard: the registry dies with the test (PDEATHSIG) and its
//! namespace and directory go on drop. `skiff-local` starts the same registry as a process of
//! its cluster with the same pieces ([`config`], [`attach`], [`server_args`]).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    fabric,
    netns::{Netns, run_in},
    process::{spawn_with_pdeathsig, stop},
    unique_prefix,
};

/// The registry's address on the fabric (node addresses start at 10.250.0.10).
pub const REGISTRY_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// The registry's port.
pub const REGISTRY_PORT: u16 = 5000;
/// The registry's bridge port in the fabric namespace.
pub const BRIDGE_PORT: &str = "registry";
/// The registry's program (Debian's `docker-registry`).
pub const PROGRAM: &str = "docker-registry";

/// `10.250.0.2:5000`: the registry's name in image references (`10.250.0.2:5000/myapp:1`).
pub fn registry_host() -> String {
    format!("{REGISTRY_IP}:{REGISTRY_PORT}")
}

/// A user and password the registry asks for (HTTP basic authentication, htpasswd with bcrypt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// What is missing on this machine to run a registry and push to it, as a message.
pub fn missing_tools(auth: bool) -> Option<String> {
    let mut tools = vec![
        (PROGRAM, "docker-registry"),
        ("skopeo", "skopeo"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ];
    if auth {
        tools.push(("htpasswd", "apache2-utils"));
    }
    tools
        .into_iter()
        .find(|(t, _)| crate::which(t).is_none())
        .map(|(t, p)| format!("{t} is not installed: apt-get install {p} (cargo xtask setup does)"))
}

/// The registry's configuration (distribution's `version: 0.1` format): blobs under
/// `storage`, every address of its namespace on [`REGISTRY_PORT`], htpasswd authentication
/// from `htpasswd` when given.
pub fn config(storage: &Path, htpasswd: Option<&Path>) -> String {
    let mut text = format!(
        "version: 0.1\n\
         log:\n  level: info\n  fields:\n    service: registry\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: :{REGISTRY_PORT}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        storage.display()
    );
    if let Some(h) = htpasswd {
        text.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: skiff-registry\n    path: {}\n",
            h.display()
        ));
    }
    text
}

/// Writes `creds` as a bcrypt htpasswd file (Debian's `htpasswd -B`).
pub fn write_htpasswd(path: &Path, creds: &Credentials) -> Result<()> {
    if creds.user.is_empty() || creds.user.contains(':') {
        bail!("a registry user name must be non-empty and without ':'");
    }
    let out = Command::new("htpasswd")
        .args(["-B", "-n", "-i"])
        .arg(&creds.user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            // The password on stdin (-i), not on the command line.
            c.stdin
                .take()
                .expect("stdin is piped")
                .write_all(creds.password.as_bytes())?;
            c.wait_with_output()
        })
        .context("running htpasswd (apache2-utils)")?;
    if !out.status.success() {
        bail!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    fs::write(path, format!("{}\n", line.trim()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Joins the namespace `ns` (which exists, `lo` up) to the bridge of the namespace `fabric` at
/// [`REGISTRY_IP`]/24, through the bridge port [`BRIDGE_PORT`].
pub fn attach(fabric: &str, ns: &str) -> Result<()> {
    fabric::attach(
        fabric,
        BRIDGE_PORT,
        ns,
        "eth0",
        &format!("{REGISTRY_IP}/24"),
    )
}

/// The command line that runs the registry with `config` inside the namespace at `netns`:
/// `nsenter --net=<netns> -- docker-registry serve <config>` (program `nsenter`).
pub fn server_args(netns: &Path, config: &Path) -> Vec<String> {
    vec![
        format!("--net={}", netns.display()),
        "--".into(),
        PROGRAM.into(),
        "serve".into(),
        config.display().to_string(),
    ]
}

/// The HTTP status of `GET path` on the registry, asked from inside its namespace at `netns`
/// over loopback, and the body.
pub fn get(netns: &Path, path: &str, creds: Option<&Credentials>) -> Result<(u16, String)> {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{REGISTRY_PORT}\r\n");
    if let Some(c) = creds {
        let token = base64(format!("{}:{}", c.user, c.password).as_bytes());
        request.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let response = run_in(netns, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, REGISTRY_PORT).into(),
            Duration::from_secs(1),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })
    .with_context(|| format!("entering {}", netns.display()))?
    .with_context(|| format!("GET {path} from the registry"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in the registry's answer {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Whether the registry answers `GET /v2/` (200, or 401 when it asks for credentials).
pub fn answers(netns: &Path) -> bool {
    matches!(get(netns, "/v2/", None), Ok((200 | 401, _)))
}

/// The tags of `repository` (`library/busybox`), from the registry's API.
pub fn tags(netns: &Path, repository: &str, creds: Option<&Credentials>) -> Result<Vec<String>> {
    let (status, body) = get(netns, &format!("/v2/{repository}/tags/list"), creds)?;
    if status != 200 {
        bail!("the registry answered {status} for the tags of {repository}: {body}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("parsing the tag list {body:?}"))?;
    let mut tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    Ok(tags)
}

/// The `skopeo copy` that pushes `source` (`oci-archive:PATH[:TAG]`, `oci:DIR[:TAG]`, or any
/// transport skopeo knows) to `dest` (`repo:tag`, e.g. `library/nginx:1.22`) in the registry,
/// run inside the registry's namespace at `netns` and sent to its loopback address: program
/// `nsenter`, these arguments.
pub fn push_args(
    netns: &Path,
    source: &str,
    dest: &str,
    creds: Option<&Credentials>,
) -> Vec<String> {
    let mut args = vec![
        format!("--net={}", netns.display()),
        "--".into(),
        "skopeo".into(),
        // The images are this run's own; no signature policy applies to them.
        "--insecure-policy".into(),
        "copy".into(),
        "--dest-tls-verify=false".into(),
    ];
    if let Some(c) = creds {
        args.push(format!("--dest-creds={}:{}", c.user, c.password));
    }
    args.push(source.to_owned());
    args.push(format!("docker://127.0.0.1:{REGISTRY_PORT}/{dest}"));
    args
}

/// Whether `dest` (`repo:tag`) is a reference `skopeo` and the registry accept: lower-case
/// path components of `[a-z0-9._-]` separated by `/`, a tag of `[A-Za-z0-9_.-]` (at most 128,
/// not starting with `.` or `-`).
pub fn check_dest(dest: &str) -> Result<()> {
    let (repo, tag) = dest
        .rsplit_once(':')
        .with_context(|| format!("{dest:?} has no tag: push to REPOSITORY:TAG, e.g. myapp:1"))?;
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
    };
    if repo.is_empty() || !repo.split('/').all(component_ok) {
        bail!(
            "{repo:?} is not a repository name (lower-case letters, digits, '.', '_', '-', components separated by '/')"
        );
    }
    if tag.is_empty()
        || tag.len() > 128
        || tag.starts_with(['.', '-'])
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        bail!("{tag:?} is not a tag (letters, digits, '_', '.', '-', at most 128)");
    }
    Ok(())
}

/// Pushes `source` to `dest` in the registry whose namespace is `netns` (see [`push_args`]).
pub fn push(netns: &Path, source: &str, dest: &str, creds: Option<&Credentials>) -> Result<()> {
    check_dest(dest)?;
    let out = Command::new("nsenter")
        .args(push_args(netns, source, dest, creds))
        .stdin(Stdio::null())
        .output()
        .context("running skopeo under nsenter")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {source} -> {dest} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a node's registry configuration directory (containerd's `hosts.toml` layout, as
/// `skiff-agent node --registry-config-dir` reads it): the registry at `host`
/// (`10.250.0.2:5000`) over plain HTTP, and the registry as `docker.io`'s mirror (pull and
/// resolve) and as its server too, so that `nginx` and `docker.io/library/nginx` come from it
/// and nothing ever falls back to the public registry (the nodes have no route out).
pub fn write_hosts_dir(dir: &Path, host: &str) -> Result<()> {
    let own = dir.join(host);
    fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
    fs::write(
        own.join("hosts.toml"),
        format!(
            "# The cluster's own registry, plain HTTP.\nserver = \"http://{host}\"\n\n\
             [host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .with_context(|| format!("writing {}/hosts.toml", own.display()))?;
    let docker = dir.join("docker.io");
    fs::create_dir_all(&docker).with_context(|| format!("creating {}", docker.display()))?;
    fs::write(
        docker.join("hosts.toml"),
        format!(
            "# docker.io through the cluster's registry only: the nodes have no route out, so\n\
             # the server is the registry too (never the public one).\n\
             server = \"http://{host}\"\n\n\
             [host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .with_context(|| format!("writing {}/hosts.toml", docker.display()))
}

/// The nginx and redis image archives (`<target>/images/servers`), built as `cargo xtask
/// images` builds them when missing or stale.
pub fn server_images() -> Result<Vec<skiff_image::Built>> {
    let dir = crate::containerd::busybox_image_dir()?.join(skiff_image::SERVERS_SUBDIR);
    skiff_image::build_servers_if_stale(&dir).context("building the server images")
}

/// Options of a test registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Ask for these credentials (htpasswd, bcrypt); `None`: anyone may pull and push.
    pub auth: Option<Credentials>,
}

/// A registry for one test, in its own namespace on the fabric; stopped and removed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    ns: Netns,
    dir: PathBuf,
    log: PathBuf,
    auth: Option<Credentials>,
}

impl Registry {
    /// Starts the registry in a new namespace joined to the bridge of the fabric namespace
    /// `fabric` (`<prefix>-fab` of a [`crate::fabric::Fabric`]) at [`REGISTRY_IP`], and waits
    /// until it answers `GET /v2/` inside its namespace.
    pub fn start(fabric: &str, opts: RegistryOptions) -> Result<Registry> {
        if let Some(why) = missing_tools(opts.auth.is_some()) {
            bail!("{why}");
        }
        let prefix = unique_prefix("reg");
        let ns = Netns::create(&prefix)?;
        let dir = std::env::temp_dir().join(&prefix);
        let mut reg = Registry {
            child: None,
            ns,
            dir: dir.clone(),
            log: dir.join("registry.log"),
            auth: opts.auth,
        };
        fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        attach(fabric, reg.ns.name())?;
        let htpasswd = match &reg.auth {
            Some(c) => {
                let p = dir.join("htpasswd");
                write_htpasswd(&p, c)?;
                Some(p)
            }
            None => None,
        };
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config(&dir.join("data"), htpasswd.as_deref()))
            .with_context(|| format!("writing {}", config_path.display()))?;
        reg.child = Some(spawn_with_pdeathsig(
            Path::new("nsenter"),
            &server_args(reg.ns.path(), &config_path),
            &reg.log,
        )?);
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if answers(self.ns.path()) {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the registry exited with {status} before answering:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!("the registry did not answer within 20 s:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its namespace (where `push` runs skopeo and `tags` asks).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// `10.250.0.2:5000`.
    pub fn host(&self) -> String {
        registry_host()
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pushes `source` (`oci-archive:PATH[:TAG]` or `oci:DIR[:TAG]`) as `dest` (`repo:tag`).
    pub fn push(&self, source: &str, dest: &str) -> Result<()> {
        push(self.ns.path(), source, dest, self.auth.as_ref())
    }

    /// The tags of `repository`, from the registry's API (with its credentials, if any).
    pub fn tags(&self, repository: &str) -> Result<Vec<String>> {
        tags(self.ns.path(), repository, self.auth.as_ref())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: removing {}: {e}", self.dir.display());
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_standard_base64_with_padding() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn the_registry_keeps_its_blobs_where_told_and_asks_for_credentials_only_when_given() {
        let open = config(Path::new("/var/lib/x/registry"), None);
        assert!(open.starts_with("version: 0.1\n"), "{open}");
        assert!(
            open.contains("rootdirectory: /var/lib/x/registry\n"),
            "{open}"
        );
        assert!(open.contains("addr: :5000\n"), "{open}");
        assert!(!open.contains("auth:"), "{open}");
        let closed = config(
            Path::new("/var/lib/x/registry"),
            Some(Path::new("/var/lib/x/htpasswd")),
        );
        assert!(
            closed.contains(
                "auth:\n  htpasswd:\n    realm: skiff-registry\n    path: /var/lib/x/htpasswd\n"
            ),
            "{closed}"
        );
    }

    #[test]
    fn pushes_run_skopeo_inside_the_registry_namespace_to_its_loopback_address() {
        let args = push_args(
            Path::new("/run/netns/r"),
            "oci-archive:/t/nginx.tar:1.22",
            "library/nginx:1.22",
            None,
        );
        assert_eq!(args[0], "--net=/run/netns/r");
        assert_eq!(args[2], "skopeo");
        assert_eq!(
            args.last().unwrap(),
            "docker://127.0.0.1:5000/library/nginx:1.22"
        );
        assert!(!args.iter().any(|a| a.starts_with("--dest-creds")));
    }

    #[test]
    fn push_destinations_must_be_repository_and_tag() {
        check_dest("myapp:1").unwrap();
        check_dest("library/nginx:1.22.1").unwrap();
        for bad in [
            "myapp",
            "MyApp:1",
            ":1",
            "a//b:1",
            "myapp:-x",
            "myapp:a b",
            "../x:1",
        ] {
            assert!(check_dest(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn the_hosts_dir_serves_the_registry_over_http_and_mirrors_docker_io() {
        let dir = std::env::temp_dir().join(format!("skiff-hosts-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write_hosts_dir(&dir, "10.250.0.2:5000").unwrap();
        let own = fs::read_to_string(dir.join("10.250.0.2:5000/hosts.toml")).unwrap();
        assert!(
            own.contains("server = \"http://10.250.0.2:5000\"\n"),
            "{own}"
        );
        let docker = fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap();
        // Nothing falls back to the public registry: the server is the local one as well.
        assert!(
            docker.contains("server = \"http://10.250.0.2:5000\"\n"),
            "{docker}"
        );
        assert!(!docker.contains("registry-1.docker.io"), "{docker}");
        assert!(
            docker.contains(
                "[host.\"http://10.250.0.2:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
            "{docker}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
