//! Integration tests, one binary, a module per stage.

mod errors;
mod features;
mod fixtures;
#[cfg(feature = "k8s")]
mod input;
#[cfg(feature = "k8s")]
mod k8s;
mod kernel;
#[cfg(feature = "k8s")]
mod kernel_concurrency;
#[cfg(feature = "k8s")]
mod kube_proxy;
mod parse;
mod pieces;
mod properties;
#[cfg(all(feature = "k8s", feature = "synthetic"))]
mod reader;
#[cfg(feature = "synthetic")]
mod scale;
mod snapshots;
mod sync;
mod trace;
