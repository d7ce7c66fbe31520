//! The CPU side of an nftables partial sync (criterion): an [`NftSyncer`] holding
//! a generated cluster of S services x E ready endpoints
//! ([`synthetic::Spec`], ClusterIP mix, `synthetic::config()`) takes one changed
//! endpoint (`synthetic::endpoint_change`, a new address each iteration) and
//! syncs. The executor does nothing (no `nft`, no fake: [`NftFake`] copies the
//! table on every run), so what is timed is the compile, the plan and the report:
//! everything before the transport.
//!
//! ```text
//! cargo bench --features synthetic --bench nft_sync                       # 10000x10
//! SVCNAT_BENCH_NFT=1000x10,10000x10 cargo bench --features synthetic --bench nft_sync
//! cargo bench --features synthetic --bench nft_sync -- --test             # once, at 1000x10
//! ```
//!
//! Benchmarks in group `nft-sync/<S>x<E>`: `partial-1`, whose throughput is
//! the operations of the transaction; `full`, a requested full sync of the
//! same cluster (the whole compile and the full plan, the listing empty). The drift check is off (it is the transport's cost, and due
//! once a minute). Each iteration prepares its slice outside the timed part and
//! checks that the sync was partial and sent something.
//!
//! [`NftFake`]: svcnat::exec::NftFake

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use svcnat::exec::{NftExecError, NftExecutor};
use svcnat::nft::{Element, Family, MapElement, Name, Transaction};
use svcnat::sync::NftSyncer;
use svcnat::synthetic::{self, Spec};

/// An executor that accepts every transaction and lists an empty table.
#[derive(Debug, Default)]
struct Nothing;

impl NftExecutor for Nothing {
    fn run(&mut self, _: &Transaction) -> Result<(), NftExecError> {
        Ok(())
    }
    fn check(&mut self, _: &Transaction) -> Result<(), NftExecError> {
        Ok(())
    }
    fn list_chains(&mut self, _: Family, _: &Name) -> Result<Vec<Name>, NftExecError> {
        Ok(Vec::new())
    }
    fn list_sets(&mut self, _: Family, _: &Name) -> Result<Vec<Name>, NftExecError> {
        Ok(Vec::new())
    }
    fn list_maps(&mut self, _: Family, _: &Name) -> Result<Vec<Name>, NftExecError> {
        Ok(Vec::new())
    }
    fn list_set_elements(
        &mut self,
        _: Family,
        _: &Name,
        _: &Name,
    ) -> Result<Vec<Element>, NftExecError> {
        Ok(Vec::new())
    }
    fn list_map_elements(
        &mut self,
        _: Family,
        _: &Name,
        _: &Name,
    ) -> Result<Vec<MapElement>, NftExecError> {
        Ok(Vec::new())
    }
    fn list_table(&mut self, _: Family, _: &Name) -> Result<String, NftExecError> {
        Ok(String::new())
    }
}

/// The points: `SVCNAT_BENCH_NFT` (`<S>x<E>,...`), else 10000x10 (1000x10 in
/// criterion's test mode).
fn points() -> Vec<(usize, usize)> {
    let test = std::env::args().any(|a| a == "--test");
    let spec = std::env::var("SVCNAT_BENCH_NFT")
        .unwrap_or_else(|_| if test { "1000x10" } else { "10000x10" }.into());
    spec.split(',')
        .map(|p| {
            let (s, e) = p
                .split_once('x')
                .unwrap_or_else(|| panic!("SVCNAT_BENCH_NFT={spec:?}: <S>x<E>,..."));
            (s.parse().expect("S"), e.parse().expect("E"))
        })
        .collect()
}

fn nft_sync(c: &mut Criterion) {
    for (services, endpoints) in points() {
        let state = Spec::new(services, endpoints).build();
        let mut syncer = NftSyncer::new(Nothing, synthetic::config())
            .expect("valid config")
            .with_drift_check(None);
        syncer.replace_state(state);
        assert!(syncer.sync().expect("nothing refuses").full);
        let mut group = c.benchmark_group(format!("nft-sync/{services}x{endpoints}"));
        let mut round = 0;
        let probe = partial(&mut syncer, services, &mut round).0;
        group.throughput(Throughput::Elements(probe as u64));
        group.bench_function("partial-1", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| partial(&mut syncer, services, &mut round).1)
                    .sum()
            })
        });
        group.bench_function("full", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        syncer.request_full_sync();
                        let start = Instant::now();
                        let report = syncer.sync().expect("nothing refuses");
                        let elapsed = start.elapsed();
                        assert!(report.full);
                        elapsed
                    })
                    .sum()
            })
        });
        group.finish();
    }
}

/// One endpoint of one service (another each round) changed and synced: the
/// operations sent and the time from handing over the slice to the report.
fn partial(syncer: &mut NftSyncer<Nothing>, services: usize, round: &mut u64) -> (usize, Duration) {
    *round += 1;
    let i = (*round as usize * 7919) % services;
    let slice = synthetic::endpoint_change(syncer.state(), i, *round).expect("endpoints");
    let start = Instant::now();
    syncer.upsert_slice(slice);
    let report = syncer.sync().expect("nothing refuses");
    let elapsed = start.elapsed();
    assert!(!report.full, "round {round}: a full sync");
    assert!(report.operations > 0, "round {round}: nothing sent");
    (report.operations, elapsed)
}

/// Few samples: a sync of the unchanged code took 0.3 s at 10000x10.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}

criterion::criterion_group! {
    name = benches;
    config = config();
    targets = nft_sync
}
criterion::criterion_main!(benches);
