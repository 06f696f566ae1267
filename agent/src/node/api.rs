//! What a pod worker writes to the API server: its pod's status (compare-and-swap), the pod
//! read again after a conflict, and the final delete. A trait rather than a channel to one
//! writer task: the worker's next step depends on each write's answer (the new
//! resourceVersion, a conflict, a refusal and its back-off), so the write stays in the worker,
//! exactly as it was, and a fake can answer it.

use std::fmt;

use skiff_api::{
    Kind as _,
    client::{Client, ClientError, DeleteParams},
    kinds::Pod,
};

/// The pod writes a node makes. Errors are the API client's, so that conflicts, refusals and
/// outages are told apart as they are for the real server.
#[async_trait::async_trait]
pub trait PodApi: fmt::Debug + Send + Sync {
    /// Writes `pod`'s status if its resourceVersion is still the stored one (a conflict
    /// otherwise); the pod as stored.
    async fn update_status(&self, pod: &Pod) -> Result<Pod, ClientError>;

    /// The pod `namespace/name` as stored.
    async fn get(&self, namespace: &str, name: &str) -> Result<Pod, ClientError>;

    /// Deletes the pod `namespace/name` for good (grace 0), only while it is the one with
    /// `uid` (a conflict otherwise).
    async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Result<(), ClientError>;
}

#[async_trait::async_trait]
impl PodApi for Client {
    async fn update_status(&self, pod: &Pod) -> Result<Pod, ClientError> {
        Client::update_status(self, pod).await
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Pod, ClientError> {
        Client::get::<Pod>(self, namespace, name).await
    }

    async fn delete(&self, namespace: &str, name: &str, uid: &str) -> Result<(), ClientError> {
        Client::delete(
            self,
            Pod::INFO,
            namespace,
            name,
            DeleteParams {
                grace_period_seconds: Some(0),
                precondition_uid: uid.to_owned(),
                ..DeleteParams::default()
            },
        )
        .await
        .map(|_| ())
    }
}
