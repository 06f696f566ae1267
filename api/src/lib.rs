//! Skiff's object model: Kubernetes-shaped types, validation, manifests, and the gRPC API.

pub mod client;
pub mod defaults;
pub mod kinds;
pub mod logs;
pub mod manifest;
pub mod meta;
pub mod net;
pub mod object;
pub mod print;
pub mod quantity;
pub mod selector;
pub mod validate;

pub use crate::{
    meta::ObjectMeta,
    object::{DecodeError, FieldError, Kind, Object, ResourceInfo},
};

pub mod proto {
    //! Generated gRPC client and server for `skiff.v1.Api`.
    #![allow(
        unreachable_pub,
        missing_debug_implementations,
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "generated code"
    )]
    tonic::include_proto!("skiff.v1");
}
