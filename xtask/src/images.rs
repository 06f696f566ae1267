//! `cargo xtask images`: OCI image archives built from what Debian ships, since no registry can
//! be reached. For now one image: `target/images/busybox.tar`, Debian's static busybox packed as a
//! one-layer OCI image layout archive that the node agent imports into containerd (the
//! `skiff-image` crate builds it, as `skiff-local up` does). Skipped when a stamp next to the
//! archive says it was made from the same busybox by the same recipe.

use std::path::Path;

use anyhow::Result;

/// Builds every image archive in `<target_dir>/images` that is missing or stale.
pub(crate) fn build(target_dir: &Path) -> Result<()> {
    let dir = target_dir.join("images");
    let out = dir.join(skiff_image::ARCHIVE);
    if skiff_image::build_busybox_if_stale(&dir)? {
        println!("    built {}", out.display());
    } else {
        println!("    {} is up to date", out.display());
    }
    Ok(())
}
