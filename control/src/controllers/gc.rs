//! (placeholder, being written)

use std::sync::Arc;

use super::Context;

#[derive(Debug)]
pub struct GarbageCollector {
    ctx: Arc<Context>,
}

impl GarbageCollector {
    pub fn new(ctx: Arc<Context>) -> GarbageCollector {
        GarbageCollector { ctx }
    }

    pub async fn run(self) {
        let _ = &self.ctx;
        std::future::pending::<()>().await;
    }
}
