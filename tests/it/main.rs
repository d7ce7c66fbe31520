//! Integration tests, one binary, a module per stage.

#[cfg(feature = "synthetic")]
mod dataplane_example;
mod errors;
mod features;
mod fixtures;
mod in_between;
#[cfg(feature = "k8s")]
mod input;
#[cfg(feature = "k8s")]
mod k8s;
mod kernel;
#[cfg(feature = "k8s")]
mod kernel_concurrency;
#[cfg(feature = "k8s")]
mod kernel_example;
mod kernel_nfacct;
mod kernel_nft;
mod kernel_nft_netlink;
mod kernel_nft_sync;
mod kernel_resilience;
mod kernel_xt;
#[cfg(feature = "k8s")]
mod kube_proxy;
mod modes_agree;
mod nfacct;
mod nft_check;
mod nft_compile;
mod nft_exec;
mod nft_flows;
mod nft_in_between;
mod nft_incremental;
mod nft_kube_proxy;
mod nft_plan;
mod nft_sync;
mod nft_trace;
mod nft_wire;
mod parse;
mod pieces;
mod properties;
#[cfg(all(feature = "k8s", feature = "synthetic"))]
mod reader;
mod resilience;
#[cfg(feature = "synthetic")]
mod scale;
mod snapshots;
mod sync;
#[cfg(feature = "k8s")]
mod sync_nft_example;
mod trace;
