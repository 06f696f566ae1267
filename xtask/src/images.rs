//! `cargo xtask images`: OCI image archives built from what Debian ships, since no registry can
//! be reached. For now one image: `target/images/busybox.tar`, Debian's static busybox with its
//! applets linked in /bin, packed as a one-layer OCI image layout archive that the node agent
//! imports into containerd (`skiff_agent::runtime::Runtime::import_dir`).
//!
//! The build is deterministic (sorted entries, fixed mtimes and owners, gzip without a name or
//! timestamp), so two builds from the same busybox give the same digests, and it is skipped when
//! a stamp next to the archive says it was made from the same busybox by the same recipe.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
/// Bumped whenever the recipe below changes what goes into the archive.
const RECIPE: u32 = 1;
/// The name containerd gives the image (`io.containerd.image.name`).
const IMAGE_NAME: &str = "docker.io/library/busybox:latest";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Where the image archives go: `<target>/images`.
pub(crate) fn images_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("images")
}

/// Builds every image archive in `<target_dir>/images` that is missing or stale.
pub(crate) fn build(target_dir: &Path) -> Result<()> {
    let dir = images_dir(target_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    busybox(&dir)
}

fn busybox(dir: &Path) -> Result<()> {
    let out = dir.join("busybox.tar");
    let stamp_path = dir.join("busybox.tar.stamp");
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
        println!("    {} is up to date", out.display());
        return Ok(());
    }

    // A build directory of this process's own, so that concurrent builds (tests that each
    // build the image when it is missing) never share one; the archive is renamed into place.
    let work = dir.join(format!(".busybox-build-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let result = build_busybox(&work, &out, &stamp_path, &stamp);
    let _ = fs::remove_dir_all(&work);
    result
}

fn build_busybox(work: &Path, out: &Path, stamp_path: &Path, stamp: &str) -> Result<()> {
    // 1. The root filesystem.
    let rootfs = work.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(BUSYBOX, bin.join("busybox")).context("copying busybox")?;
    set_mode(&bin.join("busybox"), 0o755)?;
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
    for applet in &applets {
        symlink("busybox", bin.join(applet))?;
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
        fs::create_dir_all(&p)?;
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
        fs::write(&p, content)?;
        set_mode(&p, 0o644)?;
    }

    // 2. The layer: an uncompressed tar (its digest is the diff ID) and its gzip.
    let layout = work.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let layer_tar = work.join("layer.tar");
    let mut top: Vec<String> = fs::read_dir(&rootfs)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    top.sort();
    let mut tar = deterministic_tar("gnu");
    tar.arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer_tar)
        .args(&top);
    crate::run(&mut tar).context("packing the busybox layer")?;
    let diff_id = sha256(&layer_tar)?;
    let layer_gz = work.join("layer.tar.gz");
    let gz = fs::File::create(&layer_gz)?;
    let status = Command::new("gzip")
        .args(["-n", "-9", "-c"])
        .arg(&layer_tar)
        .stdout(gz)
        .status()
        .context("running gzip")?;
    if !status.success() {
        bail!("gzip failed with {status}");
    }
    let layer = add_blob(&blobs, &layer_gz)?;

    // 3. Config, manifest, index.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = format!(
        concat!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"#,
            r#""Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"}},"#,
            r#""rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"#,
            r#""history":[{{"created_by":"cargo xtask images (Debian busybox-static)"}}]}}"#
        ),
        arch = arch,
        diff_id = diff_id
    );
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
    let index = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"{it}","manifests":[{{"#,
            r#""mediaType":"{mt}","digest":"{md}","size":{ms},"#,
            r#""annotations":{{"io.containerd.image.name":"{name}","#,
            r#""org.opencontainers.image.ref.name":"latest"}},"#,
            r#""platform":{{"architecture":"{arch}","os":"linux"}}}}]}}"#
        ),
        it = INDEX_TYPE,
        mt = MANIFEST_TYPE,
        md = manifest.0,
        ms = manifest.1,
        name = IMAGE_NAME,
        arch = arch
    );
    fs::write(layout.join("index.json"), index)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for p in [
        layout.clone(),
        layout.join("blobs"),
        layout.join("blobs/sha256"),
    ] {
        set_mode(&p, 0o755)?;
    }

    // 4. The archive, renamed into place.
    let tmp = out.with_extension(format!("tar.tmp-{}", std::process::id()));
    let mut tar = deterministic_tar("ustar");
    tar.arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tmp)
        .args(["oci-layout", "index.json", "blobs"]);
    crate::run(&mut tar).context("packing the image archive")?;
    fs::rename(&tmp, out)?;
    fs::write(stamp_path, stamp)?;
    let size = fs::metadata(out)?.len();
    println!(
        "    {} ({} KiB): {IMAGE_NAME}, manifest {}, one layer of busybox and {} applets",
        out.display(),
        size / 1024,
        manifest.0,
        applets.len()
    );
    Ok(())
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

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// `sha256:<hex>` of a file (sha256sum; xtask has no hashing crate).
fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("running sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed with {}", path.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .context("sha256sum printed no digest")?;
    Ok(format!("sha256:{hex}"))
}

/// Moves `file` into the blob store; returns its digest and size.
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let digest = sha256(file)?;
    let size = fs::metadata(file)?.len();
    let hex = digest.trim_start_matches("sha256:");
    let dest = blobs.join(hex);
    fs::rename(file, &dest)?;
    set_mode(&dest, 0o644)?;
    Ok((digest, size))
}

fn add_blob_bytes(blobs: &Path, work: &Path, name: &str, bytes: &[u8]) -> Result<(String, u64)> {
    let file = work.join(name);
    fs::write(&file, bytes)?;
    add_blob(blobs, &file)
}
