//! Images of real servers as Debian packages them, for the tests and the demo: nginx
//! (`docker.io/library/nginx:<version>`) and redis (`docker.io/library/redis:<version>`), each a
//! one-layer OCI image layout archive holding the host's installed binary, its shared-library
//! closure (from `ldd`), the files it needs, and busybox (so `sh`, `cat`, `kill` exist for
//! probes and exec). Their configs follow the Docker Official images: nginx runs
//! `nginx -g 'daemon off;'` on port 80 with its configuration in `/etc/nginx/nginx.conf` and
//! `/etc/nginx/conf.d/*.conf` and its pages in `/usr/share/nginx/html`; redis runs
//! `docker-entrypoint.sh redis-server` on port 6379 in `/data`, as the user `redis`, with
//! protected mode off unless a configuration file is given.
//!
//! Tags: the upstream version (`1.22.1`), its major.minor (`1.22`) and `latest`. The build is
//! deterministic, as the busybox image's is, and skipped when a stamp says nothing it copies
//! from the host changed.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{BUSYBOX, oci_arch, pack, set_mode, which};

/// The directory under the image directory (`target/images`) that holds the server archives:
/// apart from `busybox.tar`, so that agents importing the image directory do not import them.
pub const SERVERS_SUBDIR: &str = "servers";

/// Bumped whenever the recipe changes what goes into the archives.
const RECIPE: u32 = 1;

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A server image this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Nginx,
    Redis,
}

/// Every server image, in build order.
pub const SERVERS: [Server; 2] = [Server::Nginx, Server::Redis];

/// A built server archive.
#[derive(Debug, Clone)]
pub struct Built {
    pub server: Server,
    pub archive: PathBuf,
    /// The tags in the archive's index (`1.22.1`, `1.22`, `latest`); each is also its
    /// `org.opencontainers.image.ref.name`, so `oci-archive:<archive>:<tag>` names it.
    pub tags: Vec<String>,
    /// Whether this call built it (false: the stamp said it was up to date).
    pub built: bool,
}

impl Built {
    /// The full names (`docker.io/library/nginx:1.22`, ...).
    pub fn names(&self) -> Vec<String> {
        self.tags
            .iter()
            .map(|t| format!("{}:{t}", self.server.repository()))
            .collect()
    }
}

impl Server {
    /// The short name (`nginx`), also the repository's last part and the archive's stem.
    pub fn name(self) -> &'static str {
        match self {
            Server::Nginx => "nginx",
            Server::Redis => "redis",
        }
    }

    /// `docker.io/library/<name>`.
    pub fn repository(self) -> String {
        format!("docker.io/library/{}", self.name())
    }

    /// The archive's file name (`nginx.tar`).
    pub fn archive(self) -> String {
        format!("{}.tar", self.name())
    }

    /// The Debian package that provides it (what to install when it is missing).
    pub fn package(self) -> &'static str {
        match self {
            Server::Nginx => "nginx-light",
            Server::Redis => "redis-server",
        }
    }

    /// The host's programs the image carries, with their libraries.
    fn binaries(self) -> &'static [&'static str] {
        match self {
            Server::Nginx => &["/usr/sbin/nginx"],
            Server::Redis => &["/usr/bin/redis-server", "/usr/bin/redis-cli"],
        }
    }

    /// Further host files the image carries as they are.
    fn host_files(self) -> &'static [&'static str] {
        match self {
            Server::Nginx => &["/etc/nginx/mime.types"],
            Server::Redis => &[],
        }
    }

    /// What building it needs on this machine, as a message when something is missing.
    pub fn missing(self) -> Option<String> {
        if let Some(b) = self.binaries().iter().find(|b| !Path::new(b).is_file()) {
            return Some(format!(
                "{b} is missing: install Debian's {} (cargo xtask setup does)",
                self.package()
            ));
        }
        if let Some(f) = self.host_files().iter().find(|f| !Path::new(f).is_file()) {
            return Some(format!(
                "{f} is missing: install Debian's {} (cargo xtask setup does)",
                self.package()
            ));
        }
        if !Path::new(BUSYBOX).is_file() {
            return Some(format!(
                "{BUSYBOX} is missing: install Debian's busybox-static"
            ));
        }
        ["tar", "gzip", "ldd"]
            .into_iter()
            .find(|t| which(t).is_none())
            .map(|t| format!("{t} is not installed (it builds the {} image)", self.name()))
    }

    /// The upstream version of the host's binary (`1.22.1`), from the binary itself.
    pub fn version(self) -> Result<String> {
        let (program, arg) = match self {
            Server::Nginx => ("/usr/sbin/nginx", "-v"),
            Server::Redis => ("/usr/bin/redis-server", "--version"),
        };
        let out = Command::new(program)
            .arg(arg)
            .output()
            .with_context(|| format!("running {program} {arg}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_version(self, &text)
            .with_context(|| format!("no version in the output of {program} {arg}: {text:?}"))
    }
}

/// The version in `nginx -v` (`nginx version: nginx/1.22.1`) or `redis-server --version`
/// (`Redis server v=7.0.15 sha=...`) output.
fn parse_version(server: Server, text: &str) -> Option<String> {
    let marker = match server {
        Server::Nginx => "nginx/",
        Server::Redis => "v=",
    };
    let rest = &text[text.find(marker)? + marker.len()..];
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (v.split('.').count() >= 2 && v.split('.').all(|p| !p.is_empty())).then_some(v)
}

/// The tags for a version: itself, its major.minor, and `latest`.
fn tags(version: &str) -> Vec<String> {
    let minor: Vec<&str> = version.split('.').take(2).collect();
    let mut tags = vec![version.to_owned(), minor.join("."), "latest".to_owned()];
    tags.dedup();
    tags
}

/// Builds every server archive in `dir` (created when missing) that is missing or stale.
pub fn build_servers_if_stale(dir: &Path) -> Result<Vec<Built>> {
    SERVERS
        .iter()
        .map(|s| build_server_if_stale(*s, dir))
        .collect()
}

/// Builds `<dir>/<server>.tar` unless its stamp says it was made from the same host files by
/// the same recipe.
pub fn build_server_if_stale(server: Server, dir: &Path) -> Result<Built> {
    if let Some(why) = server.missing() {
        bail!("{why}");
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let version = server.version()?;
    let tags = tags(&version);
    let out = dir.join(server.archive());
    let stamp_path = dir.join(format!("{}.stamp", server.archive()));
    let inputs = inputs(server)?;
    let mut stamp = format!("recipe={RECIPE} version={version}\n");
    for p in &inputs {
        let m = fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        stamp.push_str(&format!("{} {} {}\n", p.display(), m.len(), m.mtime()));
    }
    let fresh = out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if !fresh {
        build_server(server, dir)?;
        fs::write(&stamp_path, stamp)
            .with_context(|| format!("writing {}", stamp_path.display()))?;
    }
    Ok(Built {
        server,
        archive: out,
        tags,
        built: !fresh,
    })
}

/// Every host file the image copies (binaries, libraries, files, busybox), canonical.
fn inputs(server: Server) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for b in server.binaries() {
        all.push(PathBuf::from(b));
        all.extend(libraries(Path::new(b))?);
    }
    all.extend(server.host_files().iter().map(PathBuf::from));
    all.push(PathBuf::from(BUSYBOX));
    let mut canonical = all
        .iter()
        .map(|p| fs::canonicalize(p).with_context(|| format!("finding {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    canonical.sort();
    canonical.dedup();
    Ok(canonical)
}

/// Builds `<dir>/<server>.tar` (`dir` exists); returns the manifest digest.
pub fn build_server(server: Server, dir: &Path) -> Result<String> {
    let work = dir.join(format!(".{}-build-{}", server.name(), std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let result = build_in(server, &work, &dir.join(server.archive()));
    let _ = fs::remove_dir_all(&work);
    result
}

fn build_in(server: Server, work: &Path, out: &Path) -> Result<String> {
    let version = server.version()?;
    let rootfs = work.join("rootfs");
    base_rootfs(&rootfs)?;
    for b in server.binaries() {
        copy_host(&rootfs, Path::new(b))?;
        for lib in libraries(Path::new(b))? {
            copy_host(&rootfs, &lib)?;
        }
    }
    for f in server.host_files() {
        copy_host(&rootfs, Path::new(f))?;
    }
    add_busybox(&rootfs)?;
    let config = match server {
        Server::Nginx => nginx(&rootfs, &version)?,
        Server::Redis => redis(&rootfs, &version)?,
    };
    let mut config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["{diff_id}"]},
        "history": [{
            "created_by": format!(
                "cargo xtask images (Debian's {} {version} and busybox-static)",
                server.package()
            )
        }],
    });
    config["config"]["Env"] = json!([PATH_ENV]);
    let env = config["config"]["Env"]
        .as_array_mut()
        .context("the image config has no Env")?;
    env.push(json!(format!(
        "{}_VERSION={version}",
        server.name().to_uppercase()
    )));
    let names: Vec<(String, String)> = tags(&version)
        .into_iter()
        .map(|t| (format!("{}:{t}", server.repository()), t))
        .collect();
    let names: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    pack(work, &rootfs, &config.to_string(), &names, out)
}

/// The directories, links and files every server image has: a merged /usr as Debian 12's,
/// root, the server's user, name service files.
fn base_rootfs(root: &Path) -> Result<()> {
    for (path, mode) in [
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("usr/lib", 0o755),
        ("usr/lib64", 0o755),
        ("usr/local/bin", 0o755),
        ("usr/local/sbin", 0o755),
        ("usr/share", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("run", 0o755),
        ("var/log", 0o755),
        ("var/lib", 0o755),
        ("var/cache", 0o755),
        ("dev", 0o755),
        ("proc", 0o755),
        ("sys", 0o755),
    ] {
        let p = root.join(path);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        set_mode(&p, mode)?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "/run"),
    ] {
        let p = root.join(link);
        symlink(target, &p).with_context(|| format!("linking {}", p.display()))?;
    }
    write(
        root,
        "etc/passwd",
        0o644,
        concat!(
            "root:x:0:0:root:/root:/bin/sh\n",
            "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n",
            "nginx:x:101:101:nginx user:/nonexistent:/bin/false\n",
            "redis:x:999:999::/home/redis:/usr/sbin/nologin\n",
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
    )?;
    write(
        root,
        "etc/group",
        0o644,
        concat!(
            "root:x:0:\n",
            "www-data:x:33:\n",
            "nginx:x:101:\n",
            "redis:x:999:\n",
            "nogroup:x:65534:\n",
        ),
    )?;
    write(
        root,
        "etc/nsswitch.conf",
        0o644,
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nservices: files\n",
    )
}

/// Busybox and its applets in /usr/bin, where no file of that name is already.
fn add_busybox(root: &Path) -> Result<()> {
    let bin = root.join("usr/bin");
    fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    set_mode(&bin.join("busybox"), 0o755)?;
    for applet in crate::busybox_applets()? {
        let in_bin = bin.join(&applet);
        let in_sbin = root.join("usr/sbin").join(&applet);
        if in_bin.symlink_metadata().is_ok() || in_sbin.symlink_metadata().is_ok() {
            continue;
        }
        symlink("busybox", &in_bin).with_context(|| format!("linking the applet {applet}"))?;
    }
    Ok(())
}

/// The nginx image: configuration in the Docker Official image's layout; returns its config.
fn nginx(root: &Path, version: &str) -> Result<Value> {
    for dir in [
        "etc/nginx/conf.d",
        "var/lib/nginx",
        "var/log/nginx",
        "var/cache/nginx",
        "usr/share/nginx/html",
    ] {
        let p = root.join(dir);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        set_mode(&p, 0o755)?;
    }
    write(
        root,
        "etc/nginx/nginx.conf",
        0o644,
        r#"user  nginx;
worker_processes  auto;

error_log  /var/log/nginx/error.log notice;
pid        /run/nginx.pid;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    default_type  application/octet-stream;

    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';

    access_log  /var/log/nginx/access.log  main;

    sendfile        on;
    keepalive_timeout  65;

    include /etc/nginx/conf.d/*.conf;
}
"#,
    )?;
    write(
        root,
        "etc/nginx/conf.d/default.conf",
        0o644,
        r#"server {
    listen       80;
    server_name  localhost;

    location / {
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }

    error_page   500 502 503 504  /50x.html;
    location = /50x.html {
        root   /usr/share/nginx/html;
    }
}
"#,
    )?;
    write(
        root,
        "usr/share/nginx/html/index.html",
        0o644,
        &format!(
            "<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n<body>\n<h1>Welcome to nginx!</h1>\n<p>nginx {version} from Debian, in a Skiff test image.</p>\n</body>\n</html>\n"
        ),
    )?;
    write(
        root,
        "usr/share/nginx/html/50x.html",
        0o644,
        "<!DOCTYPE html>\n<html>\n<head><title>Error</title></head>\n<body>\n<h1>An error occurred.</h1>\n</body>\n</html>\n",
    )?;
    // Logs to the container's output, as the official image has them.
    symlink("/dev/stdout", root.join("var/log/nginx/access.log")).context("linking access.log")?;
    symlink("/dev/stderr", root.join("var/log/nginx/error.log")).context("linking error.log")?;
    Ok(json!({
        "Cmd": ["nginx", "-g", "daemon off;"],
        "ExposedPorts": {"80/tcp": {}},
        "StopSignal": "SIGQUIT",
    }))
}

/// The redis entrypoint: what the Docker Official image's does, with busybox `su` in place of
/// gosu, and protected mode off unless a configuration file is given (the official image's
/// redis is built with it off; Debian's is on).
const REDIS_ENTRYPOINT: &str = r#"#!/bin/sh
set -e

# An option or a configuration file first: run redis-server with them.
case "$1" in
    -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ]; then
    # Reached over the pod's own address: without a configuration file, protected mode off.
    case "$2" in
        *.conf|-) ;;
        *) set -- "$@" --protected-mode no ;;
    esac
    if [ "$(id -u)" = 0 ]; then
        # As root: own the data directory, then run as the user redis.
        find . \! -user redis -exec chown redis:redis '{}' + 2>/dev/null || true
        shift
        exec su -s /usr/bin/redis-server redis -- "$@"
    fi
fi

exec "$@"
"#;

/// The redis image: its entrypoint and data directory; returns its config.
fn redis(root: &Path, _version: &str) -> Result<Value> {
    for (dir, mode) in [("data", 0o755), ("home/redis", 0o755)] {
        let p = root.join(dir);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        set_mode(&p, mode)?;
    }
    write(
        root,
        "usr/local/bin/docker-entrypoint.sh",
        0o755,
        REDIS_ENTRYPOINT,
    )?;
    Ok(json!({
        "Entrypoint": ["docker-entrypoint.sh"],
        "Cmd": ["redis-server"],
        "ExposedPorts": {"6379/tcp": {}},
        "WorkingDir": "/data",
    }))
}

fn write(root: &Path, path: &str, mode: u32, content: &str) -> Result<()> {
    let p = root.join(path);
    fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
    set_mode(&p, mode)
}

/// The shared libraries `binary` loads (its whole closure, as `ldd` resolves it), with the
/// dynamic loader.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading ldd's output for {}", binary.display()))
}

/// The library paths in `ldd` output; a library it could not find is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        // linux-vdso.so.1 (in the kernel, no file) and "statically linked" have no path.
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Copies the host file `host` into `root` at its canonical path, and where `host` names it
/// through a link (`/usr/bin/redis-server` -> `redis-check-rdb`, a library's soname), makes
/// that link too.
fn copy_host(root: &Path, host: &Path) -> Result<()> {
    let real = fs::canonicalize(host).with_context(|| format!("finding {}", host.display()))?;
    let dest = root.join(real.strip_prefix("/")?);
    if dest.symlink_metadata().is_err() {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(&real, &dest).with_context(|| format!("copying {}", real.display()))?;
    }
    let (Some(parent), Some(file)) = (host.parent(), host.file_name()) else {
        return Ok(());
    };
    let named = fs::canonicalize(parent)
        .with_context(|| format!("finding {}", parent.display()))?
        .join(file);
    if named == real {
        return Ok(());
    }
    let link = root.join(named.strip_prefix("/")?);
    if link.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(p) = link.parent() {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let target = if real.parent() == named.parent() {
        PathBuf::from(real.file_name().context("a file without a name")?)
    } else {
        real.clone()
    };
    symlink(&target, &link).with_context(|| format!("linking {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_resolved_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibpcre2-8.so.0 => /lib/x86_64-linux-gnu/libpcre2-8.so.0 (0x00007f3f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3e)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libpcre2-8.so.0"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_library_ldd_cannot_find_fails_the_build() {
        let err = parse_ldd("\tlibgone.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libgone.so.1 not found"), "{err}");
    }

    #[test]
    fn versions_come_from_the_servers_own_output() {
        assert_eq!(
            parse_version(Server::Nginx, "nginx version: nginx/1.22.1\n").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(
            parse_version(
                Server::Redis,
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=1\n"
            )
            .as_deref(),
            Some("7.0.15")
        );
        assert_eq!(parse_version(Server::Redis, "Redis server v= sha"), None);
    }

    /// A file of an image layout archive.
    fn archive_file(archive: &Path, name: &str) -> Vec<u8> {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success(), "tar -xOf {name}: {out:?}");
        out.stdout
    }

    fn blob(archive: &Path, digest: &Value) -> Vec<u8> {
        let digest = digest.as_str().unwrap();
        let hex = digest.strip_prefix("sha256:").unwrap();
        archive_file(archive, &format!("blobs/sha256/{hex}"))
    }

    #[test]
    fn server_archives_name_every_tag_and_carry_the_official_images_config_and_files() {
        for server in SERVERS {
            if let Some(why) = server.missing() {
                eprintln!("skipping {}: {why}", server.name());
                continue;
            }
            let dir = std::env::temp_dir().join(format!(
                "skiff-image-test-{}-{}",
                server.name(),
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            let built = build_server_if_stale(server, &dir).unwrap();
            assert!(built.built);
            let archive = built.archive.clone();
            let index: Value =
                serde_json::from_slice(&archive_file(&archive, "index.json")).unwrap();
            let entries = index["manifests"].as_array().unwrap();
            let names: Vec<&str> = entries
                .iter()
                .map(|m| {
                    m["annotations"]["io.containerd.image.name"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            assert_eq!(names, built.names());
            assert!(names.contains(&format!("{}:latest", server.repository()).as_str()));
            let manifest: Value =
                serde_json::from_slice(&blob(&archive, &entries[0]["digest"])).unwrap();
            assert_eq!(manifest["schemaVersion"], 2);
            let config: Value =
                serde_json::from_slice(&blob(&archive, &manifest["config"]["digest"])).unwrap();
            let layer = blob(&archive, &manifest["layers"][0]["digest"]);
            // The diff ID is the digest of the uncompressed layer.
            let gz_path = dir.join("layer.tar.gz");
            fs::write(&gz_path, &layer).unwrap();
            let tar = Command::new("gzip")
                .args(["-d", "-c"])
                .arg(&gz_path)
                .output()
                .unwrap()
                .stdout;
            let diff_id = format!(
                "sha256:{}",
                crate::hex(&<sha2::Sha256 as sha2::Digest>::digest(&tar))
            );
            assert_eq!(config["rootfs"]["diff_ids"][0], diff_id.as_str());
            let c = &config["config"];
            match server {
                Server::Nginx => {
                    assert_eq!(c["Cmd"], json!(["nginx", "-g", "daemon off;"]));
                    assert!(c["ExposedPorts"]["80/tcp"].is_object());
                }
                Server::Redis => {
                    assert_eq!(c["Entrypoint"], json!(["docker-entrypoint.sh"]));
                    assert_eq!(c["Cmd"], json!(["redis-server"]));
                    assert!(c["ExposedPorts"]["6379/tcp"].is_object());
                    assert_eq!(c["WorkingDir"], "/data");
                }
            }
            // The layer's listing: the server, its loader, busybox's sh, its user.
            let listing_path = dir.join("layer.tar");
            fs::write(&listing_path, &tar).unwrap();
            let out = Command::new("tar")
                .arg("-tvf")
                .arg(&listing_path)
                .output()
                .unwrap();
            let listing = String::from_utf8_lossy(&out.stdout).into_owned();
            let expected: &[&str] = match server {
                Server::Nginx => &[
                    "usr/sbin/nginx",
                    "etc/nginx/mime.types",
                    "etc/nginx/nginx.conf",
                ],
                Server::Redis => &[
                    "usr/bin/redis-server -> redis-check-rdb",
                    "usr/local/bin/docker-entrypoint.sh",
                ],
            };
            for want in expected.iter().chain(&[
                "usr/bin/sh -> busybox",
                "usr/lib64/ld-linux-x86-64.so.2",
                "etc/passwd",
            ]) {
                if *want == "usr/lib64/ld-linux-x86-64.so.2" && std::env::consts::ARCH != "x86_64" {
                    continue;
                }
                assert!(
                    listing.contains(want),
                    "{} lacks {want}:\n{listing}",
                    server.name()
                );
            }
            // A second build is skipped, and a forced one gives the same digests.
            assert!(!build_server_if_stale(server, &dir).unwrap().built);
            let again = build_server(server, &dir).unwrap();
            assert_eq!(entries[0]["digest"], again.as_str());
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn tags_are_the_version_its_major_minor_and_latest() {
        assert_eq!(tags("1.22.1"), vec!["1.22.1", "1.22", "latest"]);
        assert_eq!(tags("7.0"), vec!["7.0", "latest"]);
    }
}
