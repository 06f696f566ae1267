//! The busybox image the cluster's nodes import (the shared `skiff-image` crate builds it).

pub use skiff_image::{
    ARCHIVE, BUSYBOX, IMAGE_NAME, build_busybox, has_archives, hex, missing_tools,
};
