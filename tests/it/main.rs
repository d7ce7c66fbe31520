//! Integration tests, one binary, a module per stage.

mod errors;
mod fixtures;
mod kernel;
#[cfg(feature = "k8s")]
mod kube_proxy;
mod parse;
mod properties;
mod snapshots;
mod trace;
