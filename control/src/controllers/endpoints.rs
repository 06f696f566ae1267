//! (placeholder, being written)

use std::sync::Arc;

use super::Context;

#[derive(Debug)]
pub struct EndpointsController {
    ctx: Arc<Context>,
}

impl EndpointsController {
    pub fn new(ctx: Arc<Context>) -> EndpointsController {
        EndpointsController { ctx }
    }

    pub async fn run(self) {
        let _ = &self.ctx;
        std::future::pending::<()>().await;
    }
}
