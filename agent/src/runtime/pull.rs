//! Pulling an image from its registry into containerd, as containerd's own client does
//! (containerd 1.6 has no transfer service): the reference is resolved to a manifest or index
//! by the agent's registry client, then the same path as an archive import stores it (blobs
//! written into the content store under a lease, digest-checked, layers unpacked into the
//! overlayfs snapshotter, the image record created or moved), with the registry as the source
//! of blobs. Layer blobs are fetched a few at a time (`image::MAX_CONCURRENT_DOWNLOADS`, as
//! containerd's `max_concurrent_downloads`), each layer unpacked as soon as it and those below
//! it are in. Blobs already in the content store are not fetched again, and a pull whose
//! resolved digest is what the image record already points at fetches nothing.
//!
//! Concurrent pulls of one image are one pull ([`SingleFlight`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
};

use containerd_client::types::Descriptor;

use super::{
    Error, Image, Runtime,
    error::ImageError,
    image::{self, BlobReader, BlobSource},
    normalize_reference,
    registry::{Credentials, Fetched, PullError, Session, is_manifest_media_type, sha256},
};

/// The largest index, manifest or config read whole.
const MAX_JSON: usize = 8 << 20;

/// Calls for one key that overlap share the first one's result: the first caller runs the
/// work, those arriving while it runs wait for it and get a clone of its result. If the
/// caller running it is cancelled, a waiting one takes over.
#[derive(Debug)]
pub struct SingleFlight<T> {
    inflight: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<T>>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> SingleFlight<T> {
        SingleFlight {
            inflight: Mutex::default(),
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` for `key`, unless a run for `key` is under way: then its result.
    pub async fn run<F, Fut>(&self, key: &str, work: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let cell = self
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone();
        let value = cell.get_or_init(work).await.clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(key);
        }
        value
    }
}

/// A normalized reference's parts: registry, repository, and the tag or digest to resolve
/// (the digest when it has both).
pub(crate) fn split_reference(name: &str) -> (&str, &str, &str) {
    let (name_tag, digest) = match name.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (name, None),
    };
    let last_slash = name_tag.rfind('/').unwrap_or(0);
    let (repo_full, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (&name_tag[..last_slash + i], &name_tag[last_slash + i + 1..]),
        None => (name_tag, "latest"),
    };
    let (registry, repository) = repo_full.split_once('/').unwrap_or(("", repo_full));
    (registry, repository, digest.unwrap_or(tag))
}

impl Runtime {
    /// Pulls `reference` from its registry with `credentials` (or finds it up to date) and
    /// returns it. Concurrent pulls of one image with the same credentials are one pull; all
    /// get its result (a pull with other credentials is a pull of its own, so that one pod's
    /// wrong password never fails another pod's pull).
    pub async fn pull(&self, reference: &str, credentials: &Credentials) -> Result<Image, Error> {
        let name = normalize_reference(reference)?;
        let key = credentials.pull_key(&name);
        let result = self
            .pulls
            .run(&key, || async {
                let started = std::time::Instant::now();
                let result = self.pull_once(&name, credentials).await;
                match &result {
                    Ok(image) => tracing::info!(image = %name, id = %image.id, elapsed = ?started.elapsed(), "pulled image"),
                    Err(e) => tracing::warn!(image = %name, error = %e, "pulling image"),
                }
                result
            })
            .await;
        result.map_err(|source| Error::Pull {
            reference: name,
            source,
        })
    }

    async fn pull_once(&self, name: &str, credentials: &Credentials) -> Result<Image, PullError> {
        let store = |e: Error| PullError::Store(Arc::new(e));
        let (registry, repository, tag_or_digest) = split_reference(name);
        // As the kubelet: each credential matching the registry in turn until one resolves
        // the reference (none matching: anonymously); the one that did fetches the blobs.
        let attempts = Session::new(&self.registry, registry, repository, credentials).attempts();
        let mut errors = Vec::new();
        let mut resolved = None;
        for n in 0..attempts {
            let mut session =
                Session::new(&self.registry, registry, repository, credentials).with_attempt(n);
            match session.manifest(tag_or_digest).await {
                Ok(fetched) => {
                    resolved = Some((session, fetched));
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        let Some((session, fetched)) = resolved else {
            return Err(if errors.len() == 1 {
                errors.remove(0)
            } else {
                PullError::Attempts(errors)
            });
        };
        self.pull_stats.manifests.fetch_add(1, Ordering::Relaxed);
        let target = Descriptor {
            media_type: fetched.media_type.clone(),
            digest: fetched.digest.clone(),
            size: i64::try_from(fetched.bytes.len()).unwrap_or(i64::MAX),
            annotations: HashMap::new(),
        };
        let current = self.image_record(name).await.map_err(store)?;
        let up_to_date = current
            .as_ref()
            .and_then(|r| r.target.as_ref())
            .is_some_and(|t| t.digest == target.digest)
            && self.image_unpacked(name).await;
        if !up_to_date {
            let source = RegistrySource {
                session: tokio::sync::Mutex::new(session),
                cache: Mutex::new(HashMap::from([(fetched.digest.clone(), fetched)])),
                runtime: self,
            };
            let lease = self.create_lease().await.map_err(store)?;
            let result = image::store_image(self, &source, name, &target, &lease).await;
            self.delete_lease(&lease).await;
            result.map_err(|e| match e {
                ImageError::Registry(p) => p,
                ImageError::DigestMismatch { digest, actual } => PullError::DigestMismatch {
                    what: format!("blob of {name}"),
                    expected: digest,
                    actual,
                },
                ImageError::Runtime(e) => store(e),
                e => store(Error::Image {
                    context: format!("storing image {name}"),
                    source: Box::new(e),
                }),
            })?;
        }
        self.image(name)
            .await
            .map_err(store)?
            .ok_or_else(|| PullError::Manifest {
                what: format!("{name} was stored but cannot be found"),
            })
    }

    /// Manifests resolved at registries by this runtime (every pull resolves once; a shared
    /// pull once for all its callers).
    pub fn manifests_resolved(&self) -> u64 {
        self.pull_stats.manifests.load(Ordering::Relaxed)
    }

    /// Blobs fetched from registries by this runtime (those already in the content store are
    /// not fetched).
    pub fn blobs_fetched(&self) -> u64 {
        self.pull_stats.blobs.load(Ordering::Relaxed)
    }
}

/// Blobs from a registry, through one pull's session; the manifest (and whatever small blob
/// was read whole) is kept so it is not fetched twice. Concurrent fetches share the session
/// (its tokens) only while sending a request; their bodies are read apart.
struct RegistrySource<'a> {
    session: tokio::sync::Mutex<Session<'a>>,
    cache: Mutex<HashMap<String, Fetched>>,
    runtime: &'a Runtime,
}

impl RegistrySource<'_> {
    fn cached(&self, digest: &str) -> Option<Vec<u8>> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .map(|f| f.bytes.clone())
    }
}

#[async_trait::async_trait]
impl BlobSource for RegistrySource<'_> {
    async fn small(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        if let Some(bytes) = self.cached(&desc.digest) {
            return Ok(bytes);
        }
        if usize::try_from(desc.size).map_or(true, |s| s > MAX_JSON) {
            return Err(ImageError::TooLarge {
                size: u64::try_from(desc.size).unwrap_or(0),
            });
        }
        let resp = self
            .session
            .lock()
            .await
            .blob(&desc.digest, is_manifest_media_type(&desc.media_type))
            .await?;
        let url = resp.url().to_string();
        let mut reader = ResponseReader { resp, skip: 0, url };
        let mut bytes = Vec::new();
        while let Some(chunk) = reader.next().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_JSON {
                return Err(ImageError::TooLarge {
                    size: bytes.len() as u64,
                });
            }
        }
        let actual = sha256(&bytes);
        if actual != desc.digest {
            return Err(PullError::DigestMismatch {
                what: format!("blob {}", desc.digest),
                expected: desc.digest.clone(),
                actual,
            }
            .into());
        }
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                desc.digest.clone(),
                Fetched {
                    media_type: desc.media_type.clone(),
                    digest: desc.digest.clone(),
                    bytes: bytes.clone(),
                },
            );
        Ok(bytes)
    }

    async fn open(
        &self,
        desc: &Descriptor,
        offset: u64,
    ) -> Result<Box<dyn BlobReader>, ImageError> {
        if let Some(bytes) = self.cached(&desc.digest) {
            let start = usize::try_from(offset)?.min(bytes.len());
            return Ok(Box::new(MemoryReader(Some(bytes[start..].to_vec()))));
        }
        let resp = self
            .session
            .lock()
            .await
            .blob(&desc.digest, is_manifest_media_type(&desc.media_type))
            .await?;
        self.runtime
            .pull_stats
            .blobs
            .fetch_add(1, Ordering::Relaxed);
        let url = resp.url().to_string();
        Ok(Box::new(ResponseReader {
            resp,
            skip: offset,
            url,
        }))
    }
}

struct MemoryReader(Option<Vec<u8>>);

#[async_trait::async_trait]
impl BlobReader for MemoryReader {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ImageError> {
        Ok(self.0.take().filter(|b| !b.is_empty()))
    }
}

/// A blob's body as it arrives; the first `skip` bytes (a write resumed by containerd) are
/// dropped.
struct ResponseReader {
    resp: reqwest::Response,
    skip: u64,
    url: String,
}

#[async_trait::async_trait]
impl BlobReader for ResponseReader {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ImageError> {
        loop {
            let chunk = self
                .resp
                .chunk()
                .await
                .map_err(|e| PullError::Unreachable {
                    url: self.url.clone(),
                    message: super::error::chain(&e),
                })?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            let len = chunk.len() as u64;
            if self.skip >= len {
                self.skip -= len;
                continue;
            }
            let start = usize::try_from(self.skip)?;
            self.skip = 0;
            return Ok(Some(chunk[start..].to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_what_to_resolve() {
        assert_eq!(
            split_reference("docker.io/library/busybox:latest"),
            ("docker.io", "library/busybox", "latest")
        );
        assert_eq!(
            split_reference("10.250.0.2:5000/team/app:v1"),
            ("10.250.0.2:5000", "team/app", "v1")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            split_reference(&format!("10.250.0.2:5000/app:v1@{d}")),
            ("10.250.0.2:5000", "app", d.as_str())
        );
        assert_eq!(
            split_reference(&format!("localhost:5000/app@{d}")),
            ("localhost:5000", "app", d.as_str())
        );
    }

    #[tokio::test]
    async fn overlapping_calls_for_one_key_run_once_and_share_the_result() {
        let flights = Arc::new(SingleFlight::<Result<u32, String>>::default());
        let runs = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (flights, runs) = (flights.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("img", || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(runs.fetch_add(1, Ordering::SeqCst) + 7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once done, the next call runs again (a later pull re-resolves).
        let again = flights.run("img", || async { Ok(1) }).await;
        assert_eq!(again, Ok(1));
        // Another key is another flight.
        let other = flights.run("other", || async { Err("x".to_owned()) }).await;
        assert_eq!(other, Err("x".to_owned()));
    }
}
