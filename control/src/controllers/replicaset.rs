//! (placeholder, being written)

use std::sync::Arc;

use super::Context;

#[derive(Debug)]
pub struct ReplicaSetController {
    ctx: Arc<Context>,
}

impl ReplicaSetController {
    pub fn new(ctx: Arc<Context>) -> ReplicaSetController {
        ReplicaSetController { ctx }
    }

    pub async fn run(self) {
        let _ = &self.ctx;
        std::future::pending::<()>().await;
    }
}
