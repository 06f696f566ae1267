//! Image garbage collection, as the kubelet's: when the image filesystem (the filesystem of
//! containerd's overlayfs snapshotter) is used above the high threshold, images no container
//! of the node uses are removed, least recently used first, until usage is below the low
//! threshold. The removal is of image records; containerd's own garbage collector then frees
//! their content and snapshots (the labels the import and the pull put on them).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use containerd_client::services::v1::{
    DeleteImageRequest, ListImagesRequest, PluginsRequest, images_client::ImagesClient,
    introspection_client::IntrospectionClient,
};
use tokio::time::Instant;

use super::{ContainerRuntime, Error, Result, Runtime, SNAPSHOTTER, chain};

/// An image on the node, for garbage collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The record's name (a normalized reference).
    pub name: String,
    /// The config digest: records with one id are one image.
    pub id: String,
    /// Bytes of its config and layers (compressed, as stored).
    pub size: u64,
}

/// The image filesystem's size and free space, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
}

impl FsUsage {
    /// Percent used, rounded up as the kubelet does (`100 - available*100/capacity`).
    pub fn used_percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        100 - (u128::from(self.available) * 100 / u128::from(self.capacity)) as u64
    }
}

impl Runtime {
    /// Every image record with its config digest and size.
    pub async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let records = ImagesClient::new(self.channel.clone())
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(Error::containerd("listing images", ""))?
            .into_inner()
            .images;
        let mut out = Vec::new();
        for record in records {
            match super::image::size_of(self, &record).await {
                Ok((id, size)) => out.push(ImageInfo {
                    name: record.name,
                    id,
                    size,
                }),
                Err(e) => {
                    tracing::debug!(image = %record.name, error = %chain(&e), "image not usable; left alone");
                }
            }
        }
        Ok(out)
    }

    /// Deletes image record `name` (containerd's collector frees what only it held).
    pub async fn remove_image(&self, name: &str) -> Result<()> {
        match ImagesClient::new(self.channel.clone())
            .delete(self.req(DeleteImageRequest {
                name: name.into(),
                sync: true,
                target: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == containerd_client::tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd("removing image", name)(s)),
        }
    }

    /// Size and free space of the filesystem the overlayfs snapshotter keeps its root on
    /// (containerd says where).
    pub async fn image_fs_usage(&self) -> Result<FsUsage> {
        let plugins = IntrospectionClient::new(self.channel.clone())
            .plugins(self.req(PluginsRequest {
                filters: vec![format!(
                    "type==io.containerd.snapshotter.v1,id=={SNAPSHOTTER}"
                )],
            }))
            .await
            .map_err(Error::containerd("introspecting plugins", ""))?
            .into_inner()
            .plugins;
        let root = plugins
            .iter()
            .find_map(|p| p.exports.get("root").cloned())
            .unwrap_or_else(|| "/var/lib/containerd".to_owned());
        let path = Path::new(&root).to_owned();
        let stat = rustix::fs::statvfs(&path).map_err(|e| Error::File {
            action: "statfs of the image filesystem",
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(FsUsage {
            capacity: stat.f_blocks.saturating_mul(stat.f_frsize),
            available: stat.f_bavail.saturating_mul(stat.f_frsize),
        })
    }
}

/// The kubelet's image GC policy (`--image-gc-high-threshold`, `--image-gc-low-threshold`,
/// `--image-minimum-gc-age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Percent of the image filesystem above which images are removed (100 disables).
    pub high_percent: u8,
    /// Percent to bring usage down to.
    pub low_percent: u8,
    /// An image first seen less than this long ago is never removed (it may be about to be
    /// used by the pod that pulled it). The kubelet's default: 2 minutes.
    pub min_age: std::time::Duration,
}

impl GcPolicy {
    /// Checks the thresholds as the kubelet does.
    pub fn new(high_percent: u8, low_percent: u8) -> std::result::Result<GcPolicy, String> {
        if high_percent > 100 {
            return Err(format!(
                "--image-gc-high-threshold must be between 0 and 100, got {high_percent}"
            ));
        }
        if low_percent > 100 {
            return Err(format!(
                "--image-gc-low-threshold must be between 0 and 100, got {low_percent}"
            ));
        }
        if low_percent > high_percent {
            return Err(format!(
                "--image-gc-low-threshold ({low_percent}) must not be greater than \
                 --image-gc-high-threshold ({high_percent})"
            ));
        }
        Ok(GcPolicy {
            high_percent,
            low_percent,
            min_age: DEFAULT_MIN_AGE,
        })
    }
}

/// The kubelet's `--image-minimum-gc-age` default.
const DEFAULT_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(120);

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: DEFAULT_MIN_AGE,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    first_detected: Instant,
    last_used: Instant,
}

/// The image garbage collector: it remembers when each image was first seen and last used
/// by a container (in memory, as the kubelet does).
#[derive(Debug)]
pub struct ImageGc {
    policy: GcPolicy,
    records: HashMap<String, Record>,
    /// Image names never removed: those imported from the agent's image directory, which no
    /// registry can give back (as the kubelet pins its sandbox image).
    pinned: HashSet<String>,
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Image records removed.
    pub removed: Vec<String>,
    /// Bytes those images held (an estimate of what is freed).
    pub freed: u64,
}

impl ImageGc {
    pub fn new(policy: GcPolicy) -> ImageGc {
        ImageGc {
            policy,
            records: HashMap::new(),
            pinned: HashSet::new(),
        }
    }

    /// Never removes the images of these names (nor any other name of the same image).
    pub fn pin(mut self, names: impl IntoIterator<Item = String>) -> ImageGc {
        self.pinned.extend(names);
        self
    }

    /// Notes which images containers use now, and when usage is above the high threshold,
    /// removes unused images, least recently used first, until it would be below the low one.
    pub async fn collect(&mut self, runtime: &dyn ContainerRuntime) -> Result<GcReport> {
        let now = Instant::now();
        let images = runtime.images().await?;
        let containers = runtime.list().await?;
        let used_names: HashSet<&str> = containers.iter().map(|c| c.image.as_str()).collect();
        // In use or pinned: an image id any of whose names is.
        let kept_ids: HashSet<&str> = images
            .iter()
            .filter(|i| used_names.contains(i.name.as_str()) || self.pinned.contains(&i.name))
            .map(|i| i.id.as_str())
            .collect();
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        self.records.retain(|id, _| present.contains(id.as_str()));
        for image in &images {
            let r = self.records.entry(image.id.clone()).or_insert(Record {
                first_detected: now,
                last_used: now,
            });
            if used_names.contains(image.name.as_str()) {
                r.last_used = now;
            }
        }
        let mut report = GcReport::default();
        if self.policy.high_percent >= 100 {
            return Ok(report);
        }
        let usage = runtime.image_fs_usage().await?;
        if usage.used_percent() < u64::from(self.policy.high_percent) {
            return Ok(report);
        }
        let target_available =
            u128::from(usage.capacity) * u128::from(100 - self.policy.low_percent) / 100;
        let to_free = u64::try_from(target_available.saturating_sub(u128::from(usage.available)))
            .unwrap_or(u64::MAX);
        tracing::info!(
            used_percent = usage.used_percent(),
            high = self.policy.high_percent,
            to_free,
            "image filesystem above the high threshold: removing unused images"
        );
        // Candidates: one entry per image id, with its names and size.
        let mut by_id: HashMap<&str, (Vec<&str>, u64)> = HashMap::new();
        for image in &images {
            let young = self
                .records
                .get(&image.id)
                .is_some_and(|r| now.duration_since(r.first_detected) < self.policy.min_age);
            if kept_ids.contains(image.id.as_str()) || young {
                continue;
            }
            let e = by_id.entry(image.id.as_str()).or_default();
            e.0.push(image.name.as_str());
            e.1 = image.size;
        }
        let mut candidates: Vec<(&str, Vec<&str>, u64)> = by_id
            .into_iter()
            .map(|(id, (names, size))| (id, names, size))
            .collect();
        candidates.sort_by_key(|(id, names, _)| {
            let r = self.records.get(*id);
            (
                r.map(|r| r.last_used),
                r.map(|r| r.first_detected),
                names.first().map(|n| n.to_string()),
            )
        });
        for (id, names, size) in candidates {
            if report.freed >= to_free {
                break;
            }
            let mut ok = true;
            for name in names {
                match runtime.remove_image(name).await {
                    Ok(()) => report.removed.push(name.to_owned()),
                    Err(e) => {
                        ok = false;
                        tracing::warn!(image = %name, error = %chain(&e), "removing an unused image");
                    }
                }
            }
            if ok {
                report.freed += size;
                self.records.remove(id);
            }
        }
        if report.freed < to_free {
            tracing::warn!(
                freed = report.freed,
                to_free,
                "image garbage collection could not free enough: the rest is in use"
            );
        }
        Ok(report)
    }
}

/// Collects every `every` for as long as the agent runs.
pub async fn run(
    runtime: std::sync::Arc<dyn ContainerRuntime>,
    policy: GcPolicy,
    pinned: Vec<String>,
    every: std::time::Duration,
) {
    let mut gc = ImageGc::new(policy).pin(pinned);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match gc.collect(runtime.as_ref()).await {
            Ok(r) if !r.removed.is_empty() => {
                tracing::info!(removed = ?r.removed, freed = r.freed, "image garbage collection");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %chain(&e), "image garbage collection"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_checked_as_the_kubelets() {
        assert!(GcPolicy::new(85, 80).is_ok());
        assert!(GcPolicy::new(101, 80).is_err());
        let e = GcPolicy::new(70, 80).unwrap_err();
        assert!(e.contains("must not be greater"), "{e}");
    }

    #[test]
    fn usage_percent_rounds_up() {
        let u = FsUsage {
            capacity: 1000,
            available: 151,
        };
        assert_eq!(u.used_percent(), 85);
        let u = FsUsage {
            capacity: 0,
            available: 0,
        };
        assert_eq!(u.used_percent(), 0);
    }
}
