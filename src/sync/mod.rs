//! Keeping a node's tables in step with a changing cluster, sending only what changed.
//!
//! [`plan`] is the pure planner: from the ruleset last applied (or none) and the next
//! one, the restore [`Payload`] that turns one into the other: every chain whose
//! rules changed is written whole (its chain line flushes it under `--noflush`),
//! chains no longer needed are flushed and deleted (`-X`), and only chains svcnat
//! owns (`KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-`, `KUBE-FW-`, `KUBE-SEP-`) are ever
//! deleted. Unlike kube-proxy, which rewrites its top-level chains on every sync,
//! svcnat leaves a chain out unless its content changed.
//!
//! [`nft_plan`] is its sibling for the nftables mode: from what the last sync
//! applied ([`NftApplied`]: the ruleset and the chains flushed, not yet deleted)
//! and the next [`nft::Ruleset`](crate::nft::Ruleset), the
//! [`Transaction`](crate::nft::Transaction)s that take the table from one to the
//! other, as kube-proxy's nftables proxier does: element diffs, only changed
//! chains rewritten, stale chains flushed now and deleted a second later;
//! [`nft_full_plan`] writes the whole table over what a listing found.
//! [`NftSyncer`] drives it as [`Syncer`] drives [`plan`], with the same API and
//! a report that says the same things ([`NftSyncReport`]); [`nft_cleanup`]
//! removes its tables.
//!
//! [`Syncer`] owns the last applied state, kept per service, and an
//! [`Executor`](crate::exec::Executor).
//! Changes (a Service or EndpointSlice upserted or deleted, or a whole new state,
//! diffed per service) mark services dirty; a sync recompiles only those, so the
//! cost of a one-service change does not grow with the size of the cluster. The
//! first sync, any sync after a failure, and (optionally) a periodic one are full:
//! every chain is written, stale service chains found in the kernel are deleted, and
//! the jump rules from the built-in chains are ensured.
//!
//! ## Failures, drift and other writers
//!
//! - **A sync that fails** returns [`SyncError`]; the kernel then holds whole
//!   pieces of it, one of the states in between that [`Syncer::sync_at`]
//!   describes, each treating every packet as the state before or after the
//!   sync does. Call `sync()` again after
//!   [`SyncError::retry_after`]: the next sync is a full one and brings the kernel
//!   in step whether or not the cluster changed ([`FullReason::AfterFailure`]).
//! - **Drift**: every full sync writes a canary chain (`KUBE-PROXY-CANARY`, one
//!   rule) in nat and filter; a sync at least [`Syncer::with_drift_check`]'s period
//!   after the last check looks for the canaries and the jump rules, and syncs in
//!   full if a firewall reload, a restored table or an admin's flush took them
//!   ([`FullReason::Drift`], [`SyncReport::drifted`]).
//! - **Stale chains something else jumps to** are flushed and kept rather than
//!   failing the sync ([`SyncReport::kept_chains`]; a full sync sees the reference
//!   in the table it reads, a partial one sends its restore again without the
//!   `-X` the executor names as failed), and deleted by a later sync once nothing
//!   jumps to them.
//! - **Two processes** syncing one network namespace take turns: each sync holds
//!   the executor's lock ([`Executor::lock`](crate::exec::Executor::lock)).
//!
//! ```
//! use svcnat::exec::Recorder;
//! use svcnat::model::*;
//! use svcnat::sync::Syncer;
//!
//! let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
//! let mut syncer = Syncer::new(Recorder::new(), config)?;
//! syncer.upsert_service(
//!     Service::cluster_ip("ns1", "svc1", "172.30.0.41".parse().unwrap())
//!         .with_port(ServicePort::tcp("p80", 80)),
//! );
//! let first = syncer.sync()?;
//! assert!(first.full);
//!
//! syncer.upsert_slice(
//!     EndpointSlice::new("ns1", "svc1", "svc1-a", IpFamily::Ipv4)
//!         .with_port(EndpointPort::tcp("p80", 80))
//!         .with_endpoint(Endpoint::ready("10.180.0.1".parse().unwrap())),
//! );
//! let second = syncer.sync()?;
//! assert!(!second.full);
//! assert!(second.payload.to_text().contains(":KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod desired;
mod interim;
mod nft_pieces;
mod nft_plan;
mod nft_syncer;
mod plan;
mod stale;
mod syncer;

pub use crate::compile::{CANARY_CHAIN, canaries};
pub use crate::flows::{FlowDestination, StaleFlow};
pub use nft_pieces::DEFAULT_PIECE_OPERATIONS;
pub use nft_plan::{
    NftApplied, NftListed, NftPlan, STALE_CHAIN_AGE, StaleChains, nft_full_plan, nft_plan,
};
pub use nft_syncer::{
    NFT_TABLE, NftSyncError, NftSyncReport, NftSyncer, cleanup_transaction, nft_cleanup,
};
pub use plan::{Payload, plan};
pub use syncer::{
    DEFAULT_DRIFT_CHECK, DELETE_RETRY, FullReason, KeptChain, MAX_DELETE_RETRY, RETRY_AFTER,
    SyncError, SyncReport, Syncer, drift_rules,
};
