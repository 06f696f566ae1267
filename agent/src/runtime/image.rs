//! Images: importing OCI image layout archives into containerd (content store, image record,
//! unpacked snapshots) and resolving an image reference to what a container needs.
//!
//! The import does what `ctr images import` does, through the API: blobs are streamed from the
//! archive into the content store (the write protocol, with the expected digest checked by
//! containerd on commit), labelled so that containerd's garbage collector keeps what an image
//! references (manifest -> config and layers, config -> unpacked snapshot), each layer is
//! applied on a snapshot of its parent and committed under its chain ID, and the image record
//! points at the archive's manifest (or index). A lease holds everything while the import runs.

use std::{
    collections::HashMap,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
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

/// What unpacking an image needs: layer descriptors and their diff IDs.
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
    let plan = plan(archive, &image.target).await?;
    let chain = chain_ids(&plan.diff_ids);
    for blob in &plan.blobs {
        rt.write_blob(archive, blob, lease).await?;
    }
    // Unpack: each layer on its parent, committed under its chain ID.
    let mut parent = String::new();
    for ((layer, diff_id), chain_id) in plan.layers.iter().zip(&plan.diff_ids).zip(&chain) {
        if !rt.snapshot_exists(chain_id).await? {
            rt.apply_layer(layer, diff_id, &parent, chain_id, lease)
                .await?;
        }
        parent.clone_from(chain_id);
    }
    let record = ImageRecord {
        name: image.name.clone(),
        target: Some(image.target.clone()),
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

/// The blobs to store for `target` (a manifest or an index) and the layers to unpack.
async fn plan(archive: &Archive<'_>, target: &Descriptor) -> Result<Plan> {
    let mut blobs = Vec::new();
    let manifest_desc = if is_index(&target.media_type) {
        let index = parse(
            &archive.blob(&target.digest).await?,
            "parsing the image index",
        )?;
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
    let manifest = parse(
        &archive.blob(&manifest_desc.digest).await?,
        "parsing the manifest",
    )?;
    let config_desc = descriptor(&manifest["config"])?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| missing("the manifest has no layers"))?
        .iter()
        .map(descriptor)
        .collect::<Result<Vec<_>>>()?;
    let config = parse(
        &archive.blob(&config_desc.digest).await?,
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
    for layer in &layers {
        blobs.push(Blob {
            desc: layer.clone(),
            labels: HashMap::new(),
        });
    }
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
    descriptor(
        ours.or_else(|| manifests.first())
            .ok_or_else(|| missing("the index has no manifests"))?,
    )
}

fn descriptor(v: &Value) -> Result<Descriptor> {
    let digest = v["digest"]
        .as_str()
        .ok_or_else(|| missing("descriptor without digest"))?;
    if !digest.starts_with("sha256:") || digest.len() != 71 {
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

/// Docker's normalization of an image reference: `busybox` -> `docker.io/library/busybox:latest`,
/// `library/busybox`, `busybox:latest` and `index.docker.io/library/busybox` alike; another
/// registry's (a first component with '.' or ':', or `localhost`) stays as it is, with
/// `:latest` added when there is neither tag nor digest.
pub fn normalize_reference(reference: &str) -> Result<String, Error> {
    let invalid = |problem| Error::InvalidReference {
        reference: reference.to_owned(),
        problem,
    };
    let r = reference.trim();
    if r.is_empty() {
        return Err(invalid(ReferenceProblem::Empty));
    }
    let (name_tag, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_owned())
        }
        _ => ("docker.io", name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let valid_path = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
        });
    if !valid_path {
        return Err(invalid(ReferenceProblem::Name));
    }
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(ReferenceProblem::Tag));
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), Some(d)) => out.push_str(&format!(":{t}@{d}")),
        (None, Some(d)) => out.push_str(&format!("@{d}")),
        (Some(t), None) => out.push_str(&format!(":{t}")),
        (None, None) => out.push_str(":latest"),
    }
    Ok(out)
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
    };
    rt.remember_image(target_digest, &image);
    Ok(image)
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
    fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = MetadataValue::try_from(lease) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    async fn image_record(&self, name: &str) -> Result<Option<ImageRecord>, Error> {
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
    async fn image_unpacked(&self, name: &str) -> bool {
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

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
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
    async fn create_lease(&self) -> Result<String, Error> {
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

    async fn delete_lease(&self, id: &str) {
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
    async fn write_blob(&self, archive: &Archive<'_>, blob: &Blob, lease: &str) -> Result<()> {
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
        let entry = archive.blob_entry(digest)?;
        if i64::try_from(entry.size).ok() != Some(blob.desc.size) {
            return Err(ImageError::BlobSize {
                digest: digest.clone(),
                actual: entry.size,
                declared: blob.desc.size,
            });
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
        match self
            .stream_blob(archive, entry, blob, &write_ref, lease)
            .await
        {
            Ok(()) => Ok(()),
            Err(ImageError::Runtime(e))
                if e.status().is_some_and(|s| s.code() == Code::AlreadyExists) =>
            {
                Ok(())
            }
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
        archive: &Archive<'_>,
        entry: tar::Entry,
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
        let mut file = tokio::fs::File::open(archive.path).await?;
        let resume = u64::try_from(status.offset)?;
        file.seek(std::io::SeekFrom::Start(entry.offset + resume))
            .await?;
        let mut offset = status.offset;
        let mut left = entry.size - resume.min(entry.size);
        loop {
            let n = usize::try_from(left.min(CHUNK as u64))?;
            let mut data = vec![0u8; n];
            file.read_exact(&mut data).await?;
            left -= n as u64;
            let action = if left == 0 {
                WriteAction::Commit
            } else {
                WriteAction::Write
            };
            tx.send(request(action, offset, data))
                .await
                .map_err(|_| closed())?;
            let resp = next_response(&mut responses).await?;
            offset += i64::try_from(n)?;
            if action == WriteAction::Commit {
                if resp.digest != blob.desc.digest {
                    return Err(ImageError::ContentWrite {
                        what: format!("containerd committed {} instead", resp.digest),
                    });
                }
                return Ok(());
            }
            if resp.offset != offset {
                return Err(ImageError::ContentWrite {
                    what: format!(
                        "containerd is at offset {} after writing up to {offset}",
                        resp.offset
                    ),
                });
            }
        }
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
        assert!(normalize_reference("").is_err());
        assert!(normalize_reference("BusyBox").is_err());
        assert!(normalize_reference("busybox:").is_err());
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
}
