//! `skiff-local push`: copies an image into the cluster's registry with Debian's `skopeo`, run
//! inside the registry's network namespace and sent to its loopback address (nothing is sent
//! from the host's namespace).

use anyhow::{Context as _, Result, bail};
use skiff_testbed::registry;

use crate::{Layout, net, process::is_alive, state::State};

/// Pushes `source` (as skopeo names it: `oci-archive:PATH[:TAG]`, `oci:DIR[:TAG]`, ...) to
/// `dest` (`REPOSITORY:TAG`) in the registry of the cluster in `layout`; returns the image's
/// reference for manifests (`10.250.0.2:5000/myapp:1`).
pub fn push(layout: &Layout, source: &str, dest: &str) -> Result<String> {
    let state = State::load(layout)?.with_context(|| {
        format!(
            "no cluster named {:?} in {}",
            layout.name(),
            layout.dir().display()
        )
    })?;
    let reg = state.registry.as_ref().with_context(|| {
        format!(
            "the cluster {:?} runs no registry (it was started with --no-registry)",
            layout.name()
        )
    })?;
    if !state
        .processes
        .iter()
        .any(|p| p.name == "registry" && is_alive(p))
    {
        bail!(
            "the registry of the cluster {:?} is not running (`skiff-local status` shows it, `skiff-local restart registry` starts it again)",
            layout.name()
        );
    }
    // `push` checks `dest` before skopeo runs.
    registry::push(&net::netns_path(&reg.netns), source, dest, None)?;
    Ok(format!("{}/{dest}", reg.host))
}

/// How to push to the registry, for people: the `skiff-local push` line and the skopeo line it
/// runs. `flags` are the `--name`/`--dir` flags that select the cluster (may be empty).
pub fn how_to_push(state: &State, flags: &str) -> Option<String> {
    let reg = state.registry.as_ref()?;
    let raw = registry::push_args(
        &net::netns_path(&reg.netns),
        "oci-archive:app.tar",
        "myapp:1",
        None,
    );
    Some(format!(
        "\
Registry: http://{host} on the fabric (namespace {ns}), holding {images}.
  Nodes pull from it; it is also their mirror of docker.io, so `image: nginx` comes from it.
Push an image to it (an OCI archive, e.g. from `skopeo copy` or `buildah push`):
  skiff-local push{flags} oci-archive:app.tar myapp:1
which runs, inside the registry's namespace:
  nsenter {raw}
then name it in manifests as  image: {host}/myapp:1
",
        host = reg.host,
        ns = reg.netns,
        images = if reg.images.is_empty() {
            "no images yet".to_owned()
        } else {
            reg.images.join(", ")
        },
        raw = raw.join(" "),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::state::RegistryRecord;

    #[test]
    fn the_push_instructions_name_the_command_the_skopeo_line_and_the_manifest_reference() {
        let layout = Layout::new("t", Some(std::path::Path::new("/tmp/skiff-push-t"))).unwrap();
        let mut state = State::new(&layout, 1);
        assert_eq!(how_to_push(&state, ""), None);
        state.registry = Some(RegistryRecord {
            netns: "skiff-local-t-registry".into(),
            config: PathBuf::from("/tmp/skiff-push-t/registry/config.yml"),
            host: "10.250.0.2:5000".into(),
            images: vec!["library/busybox:latest".into()],
            hosts_dir: PathBuf::from("/tmp/skiff-push-t/registry/hosts.d"),
        });
        let text = how_to_push(&state, " --name t").unwrap();
        assert!(
            text.contains("skiff-local push --name t oci-archive:app.tar myapp:1"),
            "{text}"
        );
        assert!(
            text.contains(
                "nsenter --net=/run/netns/skiff-local-t-registry -- skopeo --insecure-policy copy --dest-tls-verify=false oci-archive:app.tar docker://127.0.0.1:5000/myapp:1"
            ),
            "{text}"
        );
        assert!(text.contains("image: 10.250.0.2:5000/myapp:1"), "{text}");
        assert!(text.contains("holding library/busybox:latest"), "{text}");
    }
}
