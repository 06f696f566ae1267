//! One test's own containerd with the busybox image imported, a runtime connected to it, a pod
//! network namespace and a log directory: what the runtime and security tests start from.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use skiff_agent::runtime::{Image, Runtime};
use skiff_testbed::{
    containerd::{Containerd, busybox_image_dir, containerd_available},
    netns::Netns,
};

/// Fields drop in order: the connection, then containerd (killing whatever is left), then the
/// namespace.
#[derive(Debug)]
pub struct RuntimeEnv {
    pub rt: Runtime,
    pub ctrd: Containerd,
    pub ns: Netns,
    pub logs: PathBuf,
    pub image: Image,
}

impl RuntimeEnv {
    /// Starts it for `test` (`None`: this host cannot run the test, outside CI); `tag` names the
    /// namespace (`skiff-<tag>-<pid>-<n>`).
    pub async fn start(test: &str, tag: &str) -> Option<RuntimeEnv> {
        if !containerd_available(test) {
            return None;
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let ns = Netns::create(&format!(
            "skiff-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ))
        .expect("creating the pod network namespace");
        let ctrd = Containerd::start().expect("starting containerd");
        let rt = Runtime::connect(ctrd.socket(), ctrd.namespace())
            .await
            .expect("connecting to containerd");
        let dir = busybox_image_dir().expect("building the busybox image");
        let names = rt.import_dir(&dir).await.expect("importing images");
        assert!(
            names.contains(&"docker.io/library/busybox:latest".to_owned()),
            "{names:?}"
        );
        let image = rt
            .image("busybox")
            .await
            .expect("image lookup")
            .expect("busybox is present");
        let logs = ctrd.dir().join("logs");
        Some(RuntimeEnv {
            rt,
            ctrd,
            ns,
            logs,
            image,
        })
    }
}
