//! `cargo xtask images`: OCI image archives built from what Debian ships, since no public
//! registry can be reached: `target/images/busybox.tar`, Debian's static busybox packed as a
//! one-layer OCI image layout archive that the node agent imports into containerd, and the
//! server images in `target/images/servers/` (nginx and redis from Debian's packages, for the
//! tests and the local cluster's registry). The `skiff-image` crate builds them, as
//! `skiff-local up` does. Each is skipped when a stamp next to its archive says it was made from
//! the same host files by the same recipe.

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
    for built in skiff_image::build_servers_if_stale(&dir.join(skiff_image::SERVERS_SUBDIR))? {
        let what = if built.built { "built" } else { "up to date:" };
        println!(
            "    {what} {} ({})",
            built.archive.display(),
            built.names().join(", ")
        );
    }
    Ok(())
}
