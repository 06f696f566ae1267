//! The images of the cluster: the busybox image the nodes import, and the server images (nginx,
//! redis) pushed into the cluster's registry (the shared `skiff-image` crate builds them).

pub use skiff_image::{
    ARCHIVE, BUSYBOX, IMAGE_NAME, SERVERS, Server, build_busybox, has_archives, hex, missing_tools,
    servers::build_server_if_stale,
};
