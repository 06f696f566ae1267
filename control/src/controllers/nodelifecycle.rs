//! (placeholder, being written)

use std::sync::Arc;

use super::Context;

#[derive(Debug)]
pub struct NodeLifecycleController {
    ctx: Arc<Context>,
}

impl NodeLifecycleController {
    pub fn new(ctx: Arc<Context>) -> NodeLifecycleController {
        NodeLifecycleController { ctx }
    }

    pub async fn run(self) {
        let _ = &self.ctx;
        std::future::pending::<()>().await;
    }
}
