//! The images Skiff's tests and demo run. The busybox image: Debian's static busybox with its
//! applets linked in /bin, as a one-layer OCI image layout archive (`busybox.tar`, named
//! `docker.io/library/busybox:latest`); and images of real servers from Debian's packages
//! ([`servers`]: nginx, redis). No public registry can be reached, so images come from here;
//! `cargo xtask images` and `skiff-local up` build them with this crate, and the nodes import
//! them or pull them from the local cluster's registry.
//!
//! The build is deterministic (GNU tar with sorted entries, fixed mtimes and owners; gzip without
//! a name or time), so two builds from the same busybox give the same digests.

use std::{
    fs,
    io::Read as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

pub mod servers;

pub use crate::servers::{Built, SERVERS, SERVERS_SUBDIR, Server, build_servers_if_stale};

/// Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// The archive's file name in the image directory.
pub const ARCHIVE: &str = "busybox.tar";
/// The name containerd gives the image.
pub const IMAGE_NAME: &str = "docker.io/library/busybox:latest";
/// The image's second name, with the version of Debian 12's busybox-static as its tag. A pod
/// naming `busybox:1.35` defaults to `imagePullPolicy: IfNotPresent` (Kubernetes' rule for a tag
/// other than `latest`) and so runs from the imported archive where no registry can be reached;
/// `busybox` (`latest`) means `Always`, a pull at every start.
pub const VERSIONED_NAME: &str = "docker.io/library/busybox:1.35";
/// The tag of [`VERSIONED_NAME`] (its `org.opencontainers.image.ref.name` in the archive, so
/// `oci-archive:busybox.tar:1.35` names it for skopeo).
pub const VERSION_TAG: &str = "1.35";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What building the image needs on this machine, as a message when something is missing.
pub fn missing_tools() -> Option<String> {
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!(
            "{BUSYBOX} is missing: install Debian's busybox-static, or pass --image-dir with image archives"
        ));
    }
    ["tar", "gzip"]
        .into_iter()
        .find(|t| which(t).is_none())
        .map(|t| format!("{t} is not installed (it builds the busybox image)"))
}

/// Whether `dir` holds at least one image archive (`*.tar`) for the agents to import.
pub fn has_archives(dir: &Path) -> Result<bool> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "tar") && e.path().is_file()))
}

/// Bumped whenever the recipe changes what goes into the archive.
const RECIPE: u32 = 2;

/// A program on `PATH`.
pub(crate) fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Builds `<dir>/busybox.tar` (`dir` exists); returns the manifest digest.
pub fn build_busybox(dir: &Path) -> Result<String> {
    // A build directory of this process's own, so that concurrent builds (tests that each build
    // the image when it is missing) never share one; the archive is renamed into place.
    let work = dir.join(format!(".busybox-build-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let result = build_in(&work, &dir.join(ARCHIVE));
    let _ = fs::remove_dir_all(&work);
    result
}

/// Builds `<dir>/busybox.tar` unless a stamp next to it says it was made from the same busybox
/// by the same recipe; returns whether it built.
pub fn build_busybox_if_stale(dir: &Path) -> Result<bool> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(ARCHIVE);
    let stamp_path = dir.join(format!("{ARCHIVE}.stamp"));
    let meta = fs::metadata(BUSYBOX).with_context(|| {
        format!("{BUSYBOX} is missing: install busybox-static (cargo xtask setup does)")
    })?;
    let stamp = format!(
        "recipe={RECIPE} busybox-size={} busybox-mtime={}\n",
        meta.len(),
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    );
    if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(false);
    }
    build_busybox(dir)?;
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(true)
}

/// The names of busybox's applets (sorted, without `busybox` itself).
pub(crate) fn busybox_applets() -> Result<Vec<String>> {
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    if !list.status.success() {
        bail!("busybox --list failed with {}", list.status);
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

fn build_in(work: &Path, out: &Path) -> Result<String> {
    // 1. The root filesystem.
    let rootfs = work.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    fs::copy(BUSYBOX, bin.join("busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    set_mode(&bin.join("busybox"), 0o755)?;
    let applets = busybox_applets()?;
    for applet in &applets {
        symlink("busybox", bin.join(applet))
            .with_context(|| format!("linking the applet {applet}"))?;
    }
    for (path, mode) in [
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("var", 0o755),
        ("var/www", 0o755),
        ("dev", 0o755),
        ("proc", 0o755),
        ("sys", 0o755),
        ("bin", 0o755),
    ] {
        let p = rootfs.join(path);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        set_mode(&p, mode)?;
    }
    for (path, content) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        (
            "var/www/index.html",
            "<html><body><h1>Skiff busybox</h1></body></html>\n",
        ),
    ] {
        let p = rootfs.join(path);
        fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
        set_mode(&p, 0o644)?;
    }

    // 2. The layer, config, manifest and index; 3. the archive.
    let config = format!(
        concat!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"#,
            r#""Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"}},"#,
            r#""rootfs":{{"type":"layers","diff_ids":["{{diff_id}}"]}},"#,
            r#""history":[{{"created_by":"cargo xtask images (Debian busybox-static)"}}]}}"#
        ),
        arch = oci_arch(),
    );
    pack(
        work,
        &rootfs,
        &config,
        &[(IMAGE_NAME, "latest"), (VERSIONED_NAME, VERSION_TAG)],
        out,
    )
}

/// The OCI architecture of this machine.
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Packs `rootfs` as the one layer of an image whose config is `config` (JSON in which
/// `{diff_id}` stands for the layer's diff ID), named by `names` (full name, tag) in the index,
/// into the OCI layout archive `out` (renamed into place); returns the manifest digest.
pub(crate) fn pack(
    work: &Path,
    rootfs: &Path,
    config: &str,
    names: &[(&str, &str)],
    out: &Path,
) -> Result<String> {
    // The layer: an uncompressed tar (its digest is the diff ID) and its gzip.
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let layer_tar = work.join("layer.tar");
    let mut top: Vec<String> = fs::read_dir(rootfs)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    top.sort();
    let mut tar = deterministic_tar("gnu");
    tar.arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .args(&top);
    run(&mut tar, "packing the layer")?;
    let diff_id = sha256_file(&layer_tar)?;
    let layer_gz = work.join("layer.tar.gz");
    let gz =
        fs::File::create(&layer_gz).with_context(|| format!("creating {}", layer_gz.display()))?;
    let status = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .arg(&layer_tar)
        .stdout(gz)
        .status()
        .context("running gzip")?;
    if !status.success() {
        bail!("gzip failed with {status}");
    }
    let _ = fs::remove_file(&layer_tar);
    let layer = add_blob(&blobs, &layer_gz)?;

    // Config, manifest, index.
    let arch = oci_arch();
    let config = config.replace("{diff_id}", &diff_id);
    let config = add_blob_bytes(&blobs, work, "config.json", config.as_bytes())?;
    let manifest = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"{mt}","#,
            r#""config":{{"mediaType":"{ct}","digest":"{cd}","size":{cs}}},"#,
            r#""layers":[{{"mediaType":"{lt}","digest":"{ld}","size":{ls}}}]}}"#
        ),
        mt = MANIFEST_TYPE,
        ct = CONFIG_TYPE,
        cd = config.0,
        cs = config.1,
        lt = LAYER_TYPE,
        ld = layer.0,
        ls = layer.1
    );
    let manifest = add_blob_bytes(&blobs, work, "manifest.json", manifest.as_bytes())?;
    let entries: Vec<String> = names
        .iter()
        .map(|(name, tag)| {
            format!(
                concat!(
                    r#"{{"mediaType":"{mt}","digest":"{md}","size":{ms},"#,
                    r#""annotations":{{"io.containerd.image.name":"{name}","#,
                    r#""org.opencontainers.image.ref.name":"{tag}"}},"#,
                    r#""platform":{{"architecture":"{arch}","os":"linux"}}}}"#
                ),
                mt = MANIFEST_TYPE,
                md = manifest.0,
                ms = manifest.1,
                name = name,
                tag = tag,
                arch = arch
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX_TYPE}","manifests":[{}]}}"#,
        entries.join(",")
    );
    fs::write(layout.join("index.json"), index).context("writing index.json")?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("writing oci-layout")?;
    for p in [
        layout.clone(),
        layout.join("blobs"),
        layout.join("blobs/sha256"),
    ] {
        set_mode(&p, 0o755)?;
    }

    // The archive, renamed into place.
    let tmp = out.with_extension("tar.tmp");
    let mut tar = deterministic_tar("ustar");
    tar.arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tmp)
        .args(["oci-layout", "index.json", "blobs"]);
    run(&mut tar, "packing the image archive")?;
    fs::rename(&tmp, out).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(manifest.0)
}

/// GNU tar with everything that would differ between builds pinned down.
fn deterministic_tar(format: &str) -> Command {
    let mut c = Command::new("tar");
    c.arg(format!("--format={format}"))
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
        ])
        .env("LC_ALL", "C");
    c
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: running tar"))?;
    if !out.status.success() {
        bail!(
            "{what}: tar failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `sha256:<hex>` of a file.
fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Moves `file` into the blob store; returns its digest and size.
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let digest = sha256_file(file)?;
    let size = fs::metadata(file)?.len();
    let dest = blobs.join(digest.trim_start_matches("sha256:"));
    fs::rename(file, &dest).with_context(|| format!("moving {} to the blobs", file.display()))?;
    set_mode(&dest, 0o644)?;
    Ok((digest, size))
}

fn add_blob_bytes(blobs: &Path, work: &Path, name: &str, bytes: &[u8]) -> Result<(String, u64)> {
    let file = work.join(name);
    fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    add_blob(blobs, &file)
}
