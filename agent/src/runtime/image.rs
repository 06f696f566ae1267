//! Images: importing OCI image layout archives into containerd (content store, image record,
//! unpacked snapshots) and resolving an image reference to what a container needs.
//!
//! The import does what `ctr images import` does, through the API: blobs are streamed from the
//! archive into the content store (the write protocol, with the expected digest checked by
//! containerd on commit), labelled so that containerd's garbage collector keeps what an image
//! references (manifest -> config and layers, config -> unpacked snapshot), each layer is
//! applied on a snapshot of its parent and committed under its chain ID, and the image record
//! points at the archive's manifest (or index). A lease holds everything while the import runs.
//!
//! A pull from a registry (`super::pull`) stores its image through the same path
//! ([`store_image`]), with the registry as the [`BlobSource`] instead of an archive.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    pin::Pin,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    task::Poll,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use containerd_client::{
    services::v1::{
        AbortRequest, ApplyRequest, CreateImageRequest, GetImageRequest, Image as ImageRecord,
        InfoRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction,
        WriteContentRequest, WriteContentResponse,
        content_client::ContentClient,
        diff_client::DiffClient,
        images_client::ImagesClient,
        leases_client::LeasesClient,
        snapshots::{
            CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest,
            snapshots_client::SnapshotsClient,
        },
    },
    tonic::{Code, Request, Streaming, metadata::MetadataValue},
    types::Descriptor,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use skiff_api::meta::time;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use super::{
    Image, Runtime, SNAPSHOTTER,
    error::{Error, ImageError, ReferenceProblem},
    tar,
};

type Result<T, E = ImageError> = std::result::Result<T, E>;

/// `what` is missing from a document.
fn missing(what: &'static str) -> ImageError {
    ImageError::Missing { what }
}

/// Parses JSON read from an archive or containerd.
fn parse(bytes: &[u8], what: impl Into<String>) -> Result<Value, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.into(),
        source,
    })
}

/// `source` as the runtime's error, with what was being done.
fn image_error(context: String) -> impl FnOnce(ImageError) -> Error {
    move |source| match source {
        // Errors of the runtime itself keep their own variant.
        ImageError::Runtime(e) => e,
        source => Error::Image {
            context,
            source: Box::new(source),
        },
    }
}

const MEDIA_INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_INDEX_DOCKER: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest manifest, index or config read into memory.
const MAX_JSON: u64 = 8 << 20;
/// Chunk size of content writes.
const CHUNK: usize = 1 << 20;

/// One image of an archive: its name and the descriptor its record points at.
#[derive(Debug)]
struct ArchiveImage {
    name: String,
    target: Descriptor,
}

/// A blob to store, in the order written (children before parents).
#[derive(Debug)]
struct Blob {
    desc: Descriptor,
    labels: HashMap<String, String>,
}

/// What storing an image needs: its layers (descriptors and diff IDs, bottom first) and the
/// other blobs (config, manifest, index: children before parents).
#[derive(Debug)]
struct Plan {
    blobs: Vec<Blob>,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
}

pub(super) async fn import_dir(rt: &Runtime, dir: &Path) -> Result<Vec<String>, Error> {
    let reading = |source| Error::File {
        action: "reading image directory",
        path: dir.to_owned(),
        source,
    };
    let mut archives = Vec::new();
    let mut read = tokio::fs::read_dir(dir).await.map_err(reading)?;
    while let Some(e) = read.next_entry().await.map_err(reading)? {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "tar")
            && e.file_type().await.map_err(reading)?.is_file()
        {
            archives.push(path);
        }
    }
    archives.sort();
    let mut names = Vec::new();
    for archive in archives {
        let imported = import_archive(rt, &archive)
            .await
            .map_err(image_error(format!("importing {}", archive.display())))?;
        names.extend(imported);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

async fn import_archive(rt: &Runtime, path: &Path) -> Result<Vec<String>> {
    let owned = path.to_owned();
    let entries = tokio::task::spawn_blocking(move || tar::scan(&owned))
        .await
        .map_err(|source| Error::WaitTask { source })??;
    let archive = Archive {
        path,
        entries: &entries,
    };
    let index = parse(
        &archive.read("index.json", MAX_JSON).await?,
        "parsing index.json",
    )?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let images = archive_images(&index, &stem)?;
    let mut names = Vec::new();
    for image in images {
        if let Some(existing) = rt.image_record(&image.name).await?
            && existing.target.as_ref().map(|t| &t.digest) == Some(&image.target.digest)
            && rt.image_unpacked(&image.name).await
        {
            tracing::debug!(image = %image.name, "already present");
            names.push(image.name);
            continue;
        }
        let started = std::time::Instant::now();
        let lease = rt.create_lease().await?;
        let result = import_image(rt, &archive, &image, &lease).await;
        rt.delete_lease(&lease).await;
        result.map_err(|e| {
            ImageError::Runtime(image_error(format!("importing image {}", image.name))(e))
        })?;
        tracing::info!(
            image = %image.name,
            digest = %image.target.digest,
            archive = %path.display(),
            elapsed = ?started.elapsed(),
            "imported image"
        );
        names.push(image.name);
    }
    Ok(names)
}

async fn import_image(
    rt: &Runtime,
    archive: &Archive<'_>,
    image: &ArchiveImage,
    lease: &str,
) -> Result<()> {
    store_image(rt, archive, &image.name, &image.target, lease).await
}

/// Layer blobs fetched at once by a pull or an import, as containerd's client does (its
/// `max_concurrent_downloads`, 3 by default).
pub(super) const MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// Stores image `name` whose record points at `target` (a manifest or an index) from
/// `source` (an archive or a registry): blobs not yet in the content store are written,
/// layers not yet unpacked are applied, and the image record is created or pointed at
/// `target`. Everything happens under `lease`.
///
/// Layer blobs are fetched [`MAX_CONCURRENT_DOWNLOADS`] at a time, and each layer is applied
/// as soon as it and the layers below it are in, while the later ones are still arriving.
pub(super) async fn store_image(
    rt: &Runtime,
    source: &dyn BlobSource,
    name: &str,
    target: &Descriptor,
    lease: &str,
) -> Result<()> {
    let plan = plan(source, target).await?;
    fetch_and_unpack(rt, source, &plan, lease).await?;
    // The config, the manifest and the index after the layers they point at.
    for blob in &plan.blobs {
        rt.write_blob(source, blob, lease).await?;
    }
    let record = ImageRecord {
        name: name.to_owned(),
        target: Some(target.clone()),
        ..Default::default()
    };
    let mut images = ImagesClient::new(rt.channel.clone());
    match images
        .create(rt.leased(
            CreateImageRequest {
                image: Some(record.clone()),
                source_date_epoch: None,
            },
            lease,
        ))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => {
            images
                .update(rt.leased(
                    UpdateImageRequest {
                        image: Some(record),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into()],
                        }),
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await
                .map_err(Error::containerd("updating the image record", ""))?;
            Ok(())
        }
        Err(s) => Err(Error::containerd("creating the image record", "")(s).into()),
    }
}

/// Writes the layer blobs of `plan` into the content store, [`MAX_CONCURRENT_DOWNLOADS`] at
/// a time, and applies each layer on its parent as soon as it and those below it are in.
/// The first failure (a fetch's or an apply's) ends it, with that failure.
async fn fetch_and_unpack(
    rt: &Runtime,
    source: &dyn BlobSource,
    plan: &Plan,
    lease: &str,
) -> Result<()> {
    // Each distinct blob once (a manifest may list one layer twice), in the order applied.
    let mut blobs: Vec<Blob> = Vec::new();
    for layer in &plan.layers {
        if !blobs.iter().any(|b| b.desc.digest == layer.digest) {
            blobs.push(Blob {
                desc: layer.clone(),
                labels: HashMap::new(),
            });
        }
    }
    let next = AtomicUsize::new(0);
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<(String, Result<()>)>();
    let worker = |done: tokio::sync::mpsc::UnboundedSender<(String, Result<()>)>| {
        let (next, blobs) = (&next, &blobs);
        async move {
            while let Some(blob) = blobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                let result = rt.write_blob(source, blob, lease).await;
                let failed = result.is_err();
                if done.send((blob.desc.digest.clone(), result)).is_err() || failed {
                    break;
                }
            }
        }
    };
    let workers: Vec<BoxedUnit<'_>> = (0..MAX_CONCURRENT_DOWNLOADS.min(blobs.len()))
        .map(|_| Box::pin(worker(done_tx.clone())) as BoxedUnit<'_>)
        .collect();
    drop(done_tx);
    let fetch = join_all(workers);
    let unpack = async {
        let mut stored = std::collections::HashSet::new();
        let mut parent = String::new();
        let chain = chain_ids(&plan.diff_ids);
        for ((layer, diff_id), chain_id) in plan.layers.iter().zip(&plan.diff_ids).zip(&chain) {
            while !stored.contains(&layer.digest) {
                match done.recv().await {
                    Some((digest, Ok(()))) => {
                        stored.insert(digest);
                    }
                    Some((_, Err(e))) => return Err(e),
                    None => {
                        return Err(ImageError::ContentWrite {
                            what: format!("layer {} was never written", layer.digest),
                        });
                    }
                }
            }
            if !rt.snapshot_exists(chain_id).await? {
                rt.apply_layer(layer, diff_id, &parent, chain_id, lease)
                    .await?;
            }
            parent.clone_from(chain_id);
        }
        Ok(())
    };
    tokio::pin!(fetch, unpack);
    // Unpacking ends last, unless it fails: then the fetches still under way are dropped.
    tokio::select! {
        result = &mut unpack => result,
        () = &mut fetch => unpack.await,
    }
}

type BoxedUnit<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Runs `futures` at once, until all are done.
async fn join_all(mut futures: Vec<BoxedUnit<'_>>) {
    std::future::poll_fn(move |cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// The blobs to store for `target` (a manifest or an index) and the layers to unpack.
async fn plan(source: &dyn BlobSource, target: &Descriptor) -> Result<Plan> {
    let mut blobs = Vec::new();
    let manifest_desc = if is_index(&target.media_type) {
        let index = parse(&source.small(target).await?, "parsing the image index")?;
        let chosen = choose_manifest(&index)?;
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/gc.ref.content.m.0".to_owned(),
            chosen.digest.clone(),
        );
        blobs.push(Blob {
            desc: target.clone(),
            labels,
        });
        chosen
    } else {
        target.clone()
    };
    let manifest = parse(&source.small(&manifest_desc).await?, "parsing the manifest")?;
    let config_desc = descriptor(&manifest["config"])?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| missing("the manifest has no layers"))?
        .iter()
        .map(descriptor)
        .collect::<Result<Vec<_>>>()?;
    let config = parse(
        &source.small(&config_desc).await?,
        "parsing the image config",
    )?;
    let diff_ids = diff_ids(&config)?;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCount {
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let chain = chain_ids(&diff_ids);
    let mut config_labels = HashMap::new();
    if let Some(top) = chain.last() {
        config_labels.insert(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            top.clone(),
        );
    }
    blobs.push(Blob {
        desc: config_desc.clone(),
        labels: config_labels,
    });
    let mut manifest_labels = HashMap::new();
    manifest_labels.insert(
        "containerd.io/gc.ref.content.config".to_owned(),
        config_desc.digest.clone(),
    );
    for (i, layer) in layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    blobs.push(Blob {
        desc: manifest_desc,
        labels: manifest_labels,
    });
    // Parents after children, so that a label never points at missing content.
    let index_blob = if is_index(&target.media_type) {
        Some(blobs.remove(0))
    } else {
        None
    };
    blobs.extend(index_blob);
    Ok(Plan {
        blobs,
        layers,
        diff_ids,
    })
}

/// The images an OCI layout's index.json names. The name is `io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name` when it is a full reference, else the archive's file
/// name with that tag (`busybox.tar` + `latest`).
fn archive_images(index: &Value, stem: &str) -> Result<Vec<ArchiveImage>> {
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| missing("index.json has no manifests"))?;
    let mut out = Vec::new();
    for m in manifests {
        let target = descriptor(m)?;
        let ann = &m["annotations"];
        let name = if let Some(n) = ann["io.containerd.image.name"].as_str() {
            n.to_owned()
        } else if let Some(r) = ann["org.opencontainers.image.ref.name"].as_str() {
            if r.contains('/') || r.contains(':') || r.contains('@') {
                r.to_owned()
            } else {
                format!("{stem}:{r}")
            }
        } else if !stem.is_empty() {
            stem.to_owned()
        } else {
            continue;
        };
        out.push(ArchiveImage {
            name: normalize_reference(&name)?,
            target,
        });
    }
    if out.is_empty() {
        return Err(missing("index.json names no image"));
    }
    Ok(out)
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_INDEX_OCI || media_type == MEDIA_INDEX_DOCKER
}

/// The OCI platform architecture of this machine.
fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// The manifest of an index for this platform (linux and this architecture), else the first.
fn choose_manifest(index: &Value) -> Result<Descriptor> {
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| missing("the index has no manifests"))?;
    let ours = manifests.iter().find(|m| {
        m["platform"]["os"].as_str() == Some("linux")
            && m["platform"]["architecture"].as_str() == Some(platform_arch())
    });
    // Without any platform in the index, its first manifest; with platforms, only ours.
    let unlabelled = manifests.iter().all(|m| m["platform"].is_null());
    let chosen = match ours {
        Some(m) => m,
        None if unlabelled => manifests
            .first()
            .ok_or_else(|| missing("the index has no manifests"))?,
        None => {
            return Err(ImageError::Platform {
                platform: format!("linux/{}", platform_arch()),
            });
        }
    };
    descriptor(chosen)
}

fn descriptor(v: &Value) -> Result<Descriptor> {
    let digest = v["digest"]
        .as_str()
        .ok_or_else(|| missing("descriptor without digest"))?;
    // The digest goes into registry URLs and containerd refs: sha256 and 64 lower-case hex
    // digits only.
    if check_digest(digest).is_err() {
        return Err(ImageError::Digest {
            digest: digest.to_owned(),
        });
    }
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: digest.to_owned(),
        size: v["size"]
            .as_i64()
            .ok_or_else(|| missing("descriptor without size"))?,
        annotations: Default::default(),
    })
}

fn diff_ids(config: &Value) -> Result<Vec<String>> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| missing("the image config has no rootfs.diff_ids"))?
        .iter()
        .map(|d| {
            d.as_str()
                .map(str::to_owned)
                .ok_or_else(|| missing("a diff ID is not a string"))
        })
        .collect()
}

/// Chain IDs of a layer stack: the first is its diff ID, each next one
/// sha256(parent chain ID + " " + diff ID).
pub(super) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let hash = Sha256::digest(format!("{parent} {d}").as_bytes());
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        out.push(next);
    }
    out
}

/// The longest name (domain and path) distribution's reference grammar allows.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Docker's normalization of an image reference, on distribution's reference grammar (what
/// the kubelet parses a container's image with before anything else):
///
/// ```text
/// reference := name [ ":" tag ] [ "@" digest ]
/// name      := [ domain "/" ] path-component [ "/" path-component ]*
/// domain    := host [ ":" port ]     host: DNS labels ([A-Za-z0-9] or [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9],
///                                    dot-separated; IPv4 alike) or "[" IPv6 "]"; port: [0-9]+
/// path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
/// tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
/// digest    := algorithm ":" hex     (sha256: 64 lower-case hex, the only one Skiff pulls)
/// ```
///
/// `busybox` -> `docker.io/library/busybox:latest`, `library/busybox`, `busybox:latest` and
/// `index.docker.io/library/busybox` alike; the first component is a registry when it has a
/// '.' or ':', is `localhost`, or has an upper-case letter (as Docker splits it); `:latest` is
/// added when there is neither tag nor digest. Anything else is refused with distribution's
/// reason (the kubelet's `InvalidImageName`).
pub fn normalize_reference(reference: &str) -> Result<String, Error> {
    parse_reference(reference).map_err(|problem| Error::InvalidReference {
        reference: reference.to_owned(),
        problem,
    })
}

fn parse_reference(r: &str) -> Result<String, ReferenceProblem> {
    if r.len() == 64 && r.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceProblem::HexIdentifier(r.to_owned()));
    }
    let (domain, remainder) = match r.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first, rest.to_owned())
        }
        _ => ("docker.io", r.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let remainder = if domain == "docker.io" && !remainder.contains('/') {
        format!("library/{remainder}")
    } else {
        remainder
    };
    let remote_name = remainder.split(':').next().unwrap_or_default();
    if remote_name.to_lowercase() != remote_name {
        return Err(ReferenceProblem::Uppercase(remote_name.to_owned()));
    }
    let (name_tag, digest) = match remainder.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (remainder.as_str(), None),
    };
    // The domain is split off: a ':' left can only start the tag.
    let (path, tag) = match name_tag.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (name_tag, None),
    };
    if !valid_domain(domain)
        || !path.split('/').all(valid_path_component)
        || tag.is_some_and(|t| !valid_tag(t))
        || digest.is_some_and(|d| !digest_grammar(d))
    {
        return Err(ReferenceProblem::Format);
    }
    if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceProblem::NameTooLong);
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let mut out = format!("{domain}/{path}");
    if let Some(t) = tag {
        out.push(':');
        out.push_str(t);
    }
    match digest {
        Some(d) => {
            out.push('@');
            out.push_str(d);
        }
        None if tag.is_none() => out.push_str(":latest"),
        None => {}
    }
    Ok(out)
}

/// `host[:port]`: DNS labels (IPv4 addresses are such too) or a bracketed IPv6 address, and
/// an optional port from 1 to 65535. Image references and hosts.toml both use it.
pub(super) fn valid_domain(domain: &str) -> bool {
    let port_ok = |p: &str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    };
    if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') && port_ok;
    }
    let (host, port) = match domain.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    host.split('.').all(label) && port.is_none_or(port_ok)
}

/// `[a-z0-9]+` runs joined by one separator each: `.`, `_`, `__` or any number of `-`.
fn valid_path_component(component: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = component.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// The reference grammar's digest: `[A-Za-z][A-Za-z0-9]*` components joined by `+ . _ -`,
/// ':', then at least 32 hex digits.
fn digest_grammar(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        c.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    algorithm.split(['+', '.', '_', '-']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the digest library then checks: a known algorithm with an encoding of its length, in
/// lower case. Skiff stores and verifies sha256 only, so other algorithms are refused here.
fn check_digest(digest: &str) -> Result<(), ReferenceProblem> {
    let (algorithm, hex) = digest.split_once(':').unwrap_or((digest, ""));
    if algorithm != "sha256" {
        return Err(ReferenceProblem::DigestUnsupported);
    }
    if hex.len() != 64 {
        return Err(ReferenceProblem::DigestLength);
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReferenceProblem::DigestFormat);
    }
    Ok(())
}

pub(super) async fn lookup(rt: &Runtime, reference: &str) -> Result<Option<Image>, Error> {
    let name = normalize_reference(reference)?;
    let Some(record) = rt.image_record(&name).await? else {
        return Ok(None);
    };
    resolve(rt, name.clone(), record)
        .await
        .map(Some)
        .map_err(image_error(format!("image {name}")))
}

/// What containers need of the image `name` whose record is `record`.
async fn resolve(rt: &Runtime, name: String, record: ImageRecord) -> Result<Image> {
    let target = record
        .target
        .ok_or_else(|| missing("the image has no target"))?;
    if let Some(image) = rt.resolved_image(&target.digest) {
        return Ok(Image { name, ..image });
    }
    let target_digest = target.digest.clone();
    let manifest_desc = if is_index(&target.media_type) {
        let index = parse(
            &rt.read_content(&target.digest).await?,
            format!("parsing the index of {name}"),
        )?;
        choose_manifest(&index)?
    } else {
        target
    };
    let manifest = parse(
        &rt.read_content(&manifest_desc.digest).await?,
        format!("parsing the manifest of {name}"),
    )?;
    let config_desc = descriptor(&manifest["config"])?;
    let config = parse(
        &rt.read_content(&config_desc.digest).await?,
        format!("parsing the config of {name}"),
    )?;
    let chain_id = chain_ids(&diff_ids(&config)?)
        .pop()
        .ok_or_else(|| missing("the image has no layers"))?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let c = &config["config"];
    let image = Image {
        name,
        id: config_desc.digest,
        chain_id,
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_owned(),
        user: c["User"].as_str().unwrap_or_default().to_owned(),
    };
    rt.remember_image(target_digest, &image);
    Ok(image)
}

/// Where the blobs of an image come from: an archive on the node, or a registry.
#[async_trait::async_trait]
pub(super) trait BlobSource: Send + Sync {
    /// A small blob (an index, a manifest, a config), whole.
    async fn small(&self, desc: &Descriptor) -> Result<Vec<u8>>;

    /// The bytes of blob `desc` from `offset` on.
    async fn open(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn BlobReader>>;
}

/// A blob's bytes, chunk by chunk.
#[async_trait::async_trait]
pub(super) trait BlobReader: Send {
    /// The next chunk; `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>>;
}

#[async_trait::async_trait]
impl BlobSource for Archive<'_> {
    async fn small(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.blob(&desc.digest).await
    }

    async fn open(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn BlobReader>> {
        let entry = self.blob_entry(&desc.digest)?;
        if i64::try_from(entry.size).ok() != Some(desc.size) {
            return Err(ImageError::BlobSize {
                digest: desc.digest.clone(),
                actual: entry.size,
                declared: desc.size,
            });
        }
        let mut file = tokio::fs::File::open(self.path).await?;
        let offset = offset.min(entry.size);
        file.seek(std::io::SeekFrom::Start(entry.offset + offset))
            .await?;
        Ok(Box::new(FileReader {
            file,
            left: entry.size - offset,
        }))
    }
}

/// A blob's bytes in an archive file.
struct FileReader {
    file: tokio::fs::File,
    left: u64,
}

#[async_trait::async_trait]
impl BlobReader for FileReader {
    async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        if self.left == 0 {
            return Ok(None);
        }
        let n = usize::try_from(self.left.min(CHUNK as u64))?;
        let mut data = vec![0u8; n];
        self.file.read_exact(&mut data).await?;
        self.left -= n as u64;
        Ok(Some(data))
    }
}

/// The config digest (the image's id) and stored size (config and layers) of an image record.
pub(super) async fn size_of(rt: &Runtime, record: &ImageRecord) -> Result<(String, u64), Error> {
    let name = record.name.clone();
    let sized = async {
        let target = record
            .target
            .clone()
            .ok_or_else(|| missing("the image has no target"))?;
        let manifest_desc = if is_index(&target.media_type) {
            choose_manifest(&parse(
                &rt.read_content(&target.digest).await?,
                "parsing the index",
            )?)?
        } else {
            target
        };
        let manifest = parse(
            &rt.read_content(&manifest_desc.digest).await?,
            "parsing the manifest",
        )?;
        let config = descriptor(&manifest["config"])?;
        let mut size = u64::try_from(config.size)?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            size += u64::try_from(descriptor(layer)?.size)?;
        }
        Ok((config.digest, size))
    }
    .await;
    sized.map_err(image_error(format!("image {name}")))
}

/// An opened archive: its path and where its files are.
struct Archive<'a> {
    path: &'a Path,
    entries: &'a HashMap<String, tar::Entry>,
}

impl Archive<'_> {
    fn entry(&self, name: &str) -> Result<tar::Entry> {
        self.entries
            .get(name)
            .copied()
            .ok_or_else(|| ImageError::NotInArchive {
                name: name.to_owned(),
            })
    }

    fn blob_entry(&self, digest: &str) -> Result<tar::Entry> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::Digest {
                digest: digest.to_owned(),
            })?;
        self.entry(&format!("blobs/sha256/{hex}"))
    }

    async fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        self.read_entry(e, max).await
    }

    async fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let e = self.blob_entry(digest)?;
        self.read_entry(e, MAX_JSON).await
    }

    async fn read_entry(&self, e: tar::Entry, max: u64) -> Result<Vec<u8>> {
        if e.size > max {
            return Err(ImageError::TooLarge { size: e.size });
        }
        let mut f = tokio::fs::File::open(self.path).await?;
        f.seek(std::io::SeekFrom::Start(e.offset)).await?;
        let mut buf = vec![0u8; usize::try_from(e.size)?];
        f.read_exact(&mut buf).await?;
        Ok(buf)
    }
}

impl Runtime {
    /// A request carrying the namespace and the lease header.
    pub(super) fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = MetadataValue::try_from(lease) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    pub(super) async fn image_record(&self, name: &str) -> Result<Option<ImageRecord>, Error> {
        match ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest { name: name.into() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(Error::containerd("getting image", name)(s)),
        }
    }

    /// Whether an image's top snapshot exists (false on any error: then it is imported again).
    pub(super) async fn image_unpacked(&self, name: &str) -> bool {
        match lookup(self, name).await {
            Ok(Some(image)) => self.snapshot_exists(&image.chain_id).await.unwrap_or(false),
            _ => false,
        }
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, Error> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::containerd("stat snapshot", key)(s)),
        }
    }

    pub(super) async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.req(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(Error::containerd("reading content", digest))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::containerd("reading content", digest))?;
            out.extend_from_slice(&chunk.data);
            if out.len() as u64 > MAX_JSON {
                return Err(ImageError::TooLarge {
                    size: out.len() as u64,
                });
            }
        }
        Ok(out)
    }

    /// A lease that keeps what an import writes from the garbage collector until it is done
    /// (expiring by itself after an hour should the agent die meanwhile).
    pub(super) async fn create_lease(&self) -> Result<String, Error> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "skiff-import-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/gc.expire".to_owned(),
            time::format(SystemTime::now() + Duration::from_secs(3600)),
        );
        LeasesClient::new(self.channel.clone())
            .create(self.req(containerd_client::services::v1::CreateRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(Error::containerd("creating a lease", ""))?;
        Ok(id)
    }

    pub(super) async fn delete_lease(&self, id: &str) {
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(self.req(containerd_client::services::v1::DeleteRequest {
                id: id.into(),
                sync: false,
            }))
            .await
        {
            tracing::warn!(lease = %id, "deleting lease: {s}");
        }
    }

    /// Stores one blob of the archive (unless present), with its labels.
    async fn write_blob(&self, source: &dyn BlobSource, blob: &Blob, lease: &str) -> Result<()> {
        let digest = &blob.desc.digest;
        let mut content = ContentClient::new(self.channel.clone());
        match content
            .info(self.leased(
                InfoRequest {
                    digest: digest.clone(),
                },
                lease,
            ))
            .await
        {
            Ok(info) => {
                let have = info.into_inner().info.map(|i| i.labels).unwrap_or_default();
                let missing: Vec<String> = blob
                    .labels
                    .iter()
                    .filter(|(k, v)| have.get(*k) != Some(*v))
                    .map(|(k, _)| format!("labels.{k}"))
                    .collect();
                if !missing.is_empty() {
                    content
                        .update(self.leased(
                            UpdateRequest {
                                info: Some(containerd_client::services::v1::Info {
                                    digest: digest.clone(),
                                    labels: blob.labels.clone(),
                                    ..Default::default()
                                }),
                                update_mask: Some(prost_types::FieldMask { paths: missing }),
                            },
                            lease,
                        ))
                        .await
                        .map_err(Error::containerd("labelling content", digest))?;
                }
                return Ok(());
            }
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(Error::containerd("content info", digest)(s).into()),
        }
        // Refs are shared by every client of this containerd (agents of several nodes may
        // import the same archive at once), so each write has its own; the loser of a race gets
        // AlreadyExists at commit, which is success.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write_ref = format!(
            "skiff-import-{}-{}-{digest}",
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        // An interrupted write of an earlier process with the same pid may hold this ref: start over.
        let _ = content
            .abort(self.req(AbortRequest {
                r#ref: write_ref.clone(),
            }))
            .await;
        match self.stream_blob(source, blob, &write_ref, lease).await {
            Ok(()) => Ok(()),
            Err(ImageError::Runtime(e))
                if e.status().is_some_and(|s| s.code() == Code::AlreadyExists) =>
            {
                Ok(())
            }
            // The source's own failures (the registry's reason, a digest mismatch) are not
            // hidden by the content store's.
            Err(
                e @ (ImageError::Registry(_)
                | ImageError::DigestMismatch { .. }
                | ImageError::BlobSize { .. }),
            ) => Err(e),
            Err(e) => {
                // Another importer (an agent of another node on this containerd) may have
                // committed the same blob meanwhile: then it is there, and that is success.
                let present = content
                    .info(self.leased(
                        InfoRequest {
                            digest: digest.clone(),
                        },
                        lease,
                    ))
                    .await
                    .is_ok();
                if present {
                    Ok(())
                } else {
                    Err(ImageError::Runtime(image_error(format!(
                        "writing blob {digest}"
                    ))(e)))
                }
            }
        }
    }

    /// The content write protocol: stat, writes at increasing offsets, commit with the expected
    /// size and digest (containerd verifies both) and the labels. Every request gets a response.
    async fn stream_blob(
        &self,
        source: &dyn BlobSource,
        blob: &Blob,
        write_ref: &str,
        lease: &str,
    ) -> Result<()> {
        let total = blob.desc.size;
        let expected = blob.desc.digest.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let request = |action: WriteAction, offset: i64, data: Vec<u8>| WriteContentRequest {
            action: action as i32,
            r#ref: write_ref.to_owned(),
            total,
            expected: expected.clone(),
            offset,
            data,
            labels: if action == WriteAction::Commit {
                blob.labels.clone()
            } else {
                HashMap::new()
            },
        };
        let closed = || ImageError::ContentWrite {
            what: "containerd closed the content write stream".to_owned(),
        };
        // The first message goes out before the call resolves (the server answers it first).
        tx.send(request(WriteAction::Stat, 0, Vec::new()))
            .await
            .map_err(|_| closed())?;
        let mut responses = ContentClient::new(self.channel.clone())
            .write(self.leased(ReceiverStream::new(rx), lease))
            .await
            .map_err(Error::containerd("writing content", write_ref))?
            .into_inner();
        let status = next_response(&mut responses).await?;
        // containerd's blob store is shared by all namespaces: a blob another namespace
        // already holds (another node's agent imported it) is reported whole, and a write of
        // ours that was interrupted resumes where it stopped. Either way, go on from there.
        if status.offset < 0 || status.offset > total {
            return Err(ImageError::ContentWrite {
                what: format!(
                    "write {write_ref} reports offset {} of {total}",
                    status.offset
                ),
            });
        }
        let resume = u64::try_from(status.offset)?;
        // From the start, the bytes are hashed here too, so that a source that sends something
        // else is told apart (a digest mismatch) from a failing content store.
        let mut hasher = (resume == 0).then(Sha256::new);
        let mut offset = status.offset;
        if status.offset < total {
            let mut reader = source.open(&blob.desc, resume).await?;
            // What the source yields (a registry's body comes in pieces of a few KiB) goes
            // out in writes of up to CHUNK bytes: each write is a round trip to containerd.
            let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
            loop {
                let chunk = reader.next().await?;
                let end = chunk.is_none();
                let mut rest = chunk.as_deref().unwrap_or_default();
                let arrived = offset + i64::try_from(pending.len() + rest.len())?;
                if arrived > total {
                    return Err(ImageError::BlobSize {
                        digest: expected.clone(),
                        actual: u64::try_from(arrived)?,
                        declared: total,
                    });
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(rest);
                }
                while !rest.is_empty() || (end && !pending.is_empty()) {
                    let take = (CHUNK - pending.len()).min(rest.len());
                    pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if pending.len() < CHUNK && !end {
                        break;
                    }
                    let data = std::mem::replace(&mut pending, Vec::with_capacity(CHUNK));
                    let n = i64::try_from(data.len())?;
                    tx.send(request(WriteAction::Write, offset, data))
                        .await
                        .map_err(|_| closed())?;
                    let resp = next_response(&mut responses).await?;
                    offset += n;
                    if resp.offset != offset {
                        return Err(ImageError::ContentWrite {
                            what: format!(
                                "containerd is at offset {} after writing up to {offset}",
                                resp.offset
                            ),
                        });
                    }
                }
                if end {
                    break;
                }
            }
        }
        if offset != total {
            return Err(ImageError::BlobSize {
                digest: expected.clone(),
                actual: u64::try_from(offset)?,
                declared: total,
            });
        }
        if let Some(h) = hasher {
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            let actual = format!("sha256:{hex}");
            if actual != expected {
                return Err(ImageError::DigestMismatch {
                    digest: expected,
                    actual,
                });
            }
        }
        tx.send(request(WriteAction::Commit, offset, Vec::new()))
            .await
            .map_err(|_| closed())?;
        let resp = next_response(&mut responses).await?;
        if resp.digest != blob.desc.digest {
            return Err(ImageError::ContentWrite {
                what: format!("containerd committed {} instead", resp.digest),
            });
        }
        Ok(())
    }

    /// Applies one layer onto a snapshot of `parent` and commits it as `chain_id`.
    async fn apply_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        parent: &str,
        chain_id: &str,
        lease: &str,
    ) -> Result<()> {
        let key = format!(
            "skiff-extract-{}-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            chain_id
        );
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mounts = snapshots
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.into(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(Error::containerd(
                "preparing a snapshot for layer",
                &layer.digest,
            ))?
            .into_inner()
            .mounts;
        let result = async {
            let applied = DiffClient::new(self.channel.clone())
                .apply(self.leased(
                    ApplyRequest {
                        diff: Some(layer.clone()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await
                .map_err(Error::containerd("applying layer", &layer.digest))?
                .into_inner()
                .applied
                .ok_or_else(|| missing("the diff service returned no descriptor"))?;
            if applied.digest != diff_id {
                return Err(ImageError::DiffId {
                    layer: layer.digest.clone(),
                    actual: applied.digest,
                    expected: diff_id.to_owned(),
                });
            }
            match snapshots
                .commit(self.leased(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain_id.into(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    },
                    lease,
                ))
                .await
            {
                Ok(_) => Ok(true),
                // Unpacked meanwhile by someone else.
                Err(s) if s.code() == Code::AlreadyExists => Ok(false),
                Err(s) => Err(Error::containerd("committing snapshot", chain_id)(s).into()),
            }
        }
        .await;
        if !matches!(result, Ok(true))
            && let Err(e) = self.remove_snapshot(&key).await
        {
            tracing::warn!("removing snapshot {key}: {}", super::error::chain(&e));
        }
        result.map(|_| ())
    }
}

async fn next_response(
    responses: &mut Streaming<WriteContentResponse>,
) -> Result<WriteContentResponse> {
    responses
        .message()
        .await
        .map_err(Error::containerd("writing content", ""))?
        .ok_or_else(|| ImageError::ContentWrite {
            what: "containerd closed the content write stream".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_normalization() {
        for r in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "library/busybox:latest",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
        ] {
            assert_eq!(
                normalize_reference(r).unwrap(),
                "docker.io/library/busybox:latest",
                "{r}"
            );
        }
        assert_eq!(
            normalize_reference("nginx:1.25").unwrap(),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(
            normalize_reference("me/app").unwrap(),
            "docker.io/me/app:latest"
        );
        assert_eq!(
            normalize_reference("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_reference("quay.io/a/b:v1").unwrap(),
            "quay.io/a/b:v1"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize_reference(&format!("busybox@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
    }

    #[test]
    fn references_outside_the_distribution_grammar_are_refused_with_its_reason() {
        let hex = "a".repeat(64);
        let long_path = format!("{}/x", "a".repeat(260));
        let c = |r: &str, why: &str| (r.to_owned(), why.to_owned());
        let format = "invalid reference format";
        let cases = [
            c("", format),
            c("busybox:", format),
            c("../etc/passwd", format),
            c("reg.io/../x", format),
            c("reg.io/a/./b", format),
            c("reg.io/a//b", format),
            c("reg.io/a/", format),
            c("a..b", format),
            c("a___b", format),
            c("a-.b", format),
            c("-a", format),
            c("a_", format),
            c(" busybox", format),
            c("busy box", format),
            c("busybox:.tag", format),
            c("busybox:-tag", format),
            c("busybox:a:b", format),
            c(&format!("busybox:{}", "t".repeat(129)), format),
            c("reg_x.io/app", format),
            c("-reg.io/app", format),
            c("reg.io:port/app", format),
            c("reg.io:/app", format),
            c("[::1/app", format),
            c("busybox@sha256:abc", format),
            c("busybox@sha256", format),
            c("busybox@", format),
            c("b\u{fc}sybox", format),
            c(
                "BusyBox",
                "invalid reference format: repository name (library/BusyBox) must be lowercase",
            ),
            c(
                "reg.io/Team/app:V1",
                "invalid reference format: repository name (Team/app) must be lowercase",
            ),
            c(
                &hex,
                &format!(
                    "invalid repository name ({hex}), cannot specify 64-byte hexadecimal strings"
                ),
            ),
            c(
                &format!("reg.io/{long_path}"),
                "repository name must not be more than 255 characters",
            ),
            c(
                &format!("busybox@sha256:{}", "a".repeat(63)),
                "invalid checksum digest length",
            ),
            c(
                &format!("busybox@sha256:{}", "A".repeat(64)),
                "invalid checksum digest format",
            ),
            c(
                &format!("busybox@sha512:{}", "a".repeat(128)),
                "unsupported digest algorithm",
            ),
            c(
                &format!("busybox@md5:{}", "a".repeat(32)),
                "unsupported digest algorithm",
            ),
        ];
        for (reference, reason) in cases {
            let e = normalize_reference(&reference).expect_err(&reference);
            assert_eq!(
                e.to_string(),
                format!("couldn't parse image reference {reference:?}: {reason}"),
                "{reference}"
            );
        }
    }

    #[test]
    fn references_inside_the_distribution_grammar_are_normalized_as_docker_does() {
        let d = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let cases: Vec<(String, String)> = vec![
            (
                "a/b.c_d__e-f---g".into(),
                "docker.io/a/b.c_d__e-f---g:latest".into(),
            ),
            (
                "docker.io/a.b_c__d".into(),
                "docker.io/library/a.b_c__d:latest".into(),
            ),
            (
                "reg.io/a/b/c:V1.0_x-y".into(),
                "reg.io/a/b/c:V1.0_x-y".into(),
            ),
            (
                "REG.example:5000/app".into(),
                "REG.example:5000/app:latest".into(),
            ),
            (
                "10.250.0.2:5000/app:v1".into(),
                "10.250.0.2:5000/app:v1".into(),
            ),
            (
                "[fd00::2]:5000/app".into(),
                "[fd00::2]:5000/app:latest".into(),
            ),
            ("[::1]/app:t".into(), "[::1]/app:t".into()),
            ("localhost/app".into(), "localhost/app:latest".into()),
            (
                "localhost:5000".into(),
                "docker.io/library/localhost:5000".into(),
            ),
            (
                format!("busybox:1@{d}"),
                format!("docker.io/library/busybox:1@{d}"),
            ),
            (format!("reg.io/app@{d}"), format!("reg.io/app@{d}")),
            (
                format!("busybox:{}", "t".repeat(128)),
                format!("docker.io/library/busybox:{}", "t".repeat(128)),
            ),
            ("busybox:_t".into(), "docker.io/library/busybox:_t".into()),
        ];
        for (reference, normalized) in cases {
            assert_eq!(
                normalize_reference(&reference).unwrap_or_else(|e| panic!("{reference}: {e}")),
                normalized,
                "{reference}"
            );
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expect = Sha256::digest(format!("{a} {b}").as_bytes());
        let hex: String = expect.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(chain[1], format!("sha256:{hex}"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn descriptors_with_a_digest_that_is_not_sha256_lower_case_hex_are_refused_naming_it() {
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let d =
            descriptor(&serde_json::json!({"mediaType": "m", "digest": good, "size": 3})).unwrap();
        assert_eq!(d.digest, good);
        for bad in [
            format!("sha256:{}", "z".repeat(64)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}/../{}", "a".repeat(30), "b".repeat(30)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{}", "a".repeat(64)),
            "sha256:".to_owned(),
        ] {
            let e = descriptor(&serde_json::json!({"mediaType": "m", "digest": bad, "size": 3}))
                .expect_err(&bad);
            assert!(matches!(e, ImageError::Digest { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&bad), "{e}");
        }
    }

    #[test]
    fn domains_are_host_and_port_with_ipv6_in_brackets_and_ports_from_1_to_65535() {
        for ok in [
            "10.250.0.2:5000",
            "registry-1.docker.io",
            "localhost",
            "reg.io:65535",
            "reg.io:1",
            "[fd00::2]:5000",
            "[::1]",
        ] {
            assert!(valid_domain(ok), "{ok}");
        }
        for bad in [
            "", "a/b", "x:0", "x:65536", "x:", "x:+5", "-x.io", "x_y.io", "[::1", "[]:5000",
            "[::1]:0", "[::1]x", "a:b:c",
        ] {
            assert!(!valid_domain(bad), "{bad}");
        }
        // In references too: a port that cannot be dialled is outside the format.
        assert_eq!(
            normalize_reference("reg.io:0/app").unwrap_err().to_string(),
            "couldn't parse image reference \"reg.io:0/app\": invalid reference format"
        );
    }

    #[test]
    fn archive_names() {
        let index: Value = serde_json::from_str(
            r#"{"manifests":[
              {"mediaType":"m","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1,
               "annotations":{"org.opencontainers.image.ref.name":"latest"}},
              {"mediaType":"m","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","size":1,
               "annotations":{"io.containerd.image.name":"docker.io/library/x:1","org.opencontainers.image.ref.name":"1"}}
            ]}"#,
        )
        .unwrap();
        let images = archive_images(&index, "nginx").unwrap();
        assert_eq!(images[0].name, "docker.io/library/nginx:latest");
        assert_eq!(images[1].name, "docker.io/library/x:1");
    }

    #[tokio::test]
    async fn join_all_runs_its_futures_at_once_until_every_one_is_done() {
        // Each waits for all three: run one after another, they would never finish.
        let barrier = tokio::sync::Barrier::new(3);
        let finished = AtomicUsize::new(0);
        let futures: Vec<BoxedUnit<'_>> = (0..3)
            .map(|_| {
                Box::pin(async {
                    barrier.wait().await;
                    finished.fetch_add(1, Ordering::SeqCst);
                }) as BoxedUnit<'_>
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(10), join_all(futures))
            .await
            .expect("the three futures ran at once");
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        // None: done at once.
        join_all(Vec::new()).await;
    }
}
