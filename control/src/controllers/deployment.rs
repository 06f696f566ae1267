//! (placeholder, being written)

use std::sync::Arc;

use super::Context;

#[derive(Debug)]
pub struct DeploymentController {
    ctx: Arc<Context>,
}

impl DeploymentController {
    pub fn new(ctx: Arc<Context>) -> DeploymentController {
        DeploymentController { ctx }
    }

    pub async fn run(self) {
        let _ = &self.ctx;
        std::future::pending::<()>().await;
    }
}
