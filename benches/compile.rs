//! Compile and render time for clusters of growing size (criterion).
//!
//! `cargo bench --bench compile`

use std::net::{IpAddr, Ipv4Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use svcnat::model::*;

/// `services` ClusterIP services with `endpoints` ready endpoints each.
fn cluster(services: usize, endpoints: usize) -> ClusterState {
    let mut state = ClusterState::new();
    for i in 0..services {
        let name = format!("svc{i}");
        let ip = IpAddr::V4(Ipv4Addr::from(0xac1e_0000u32 + i as u32));
        state.upsert_service(
            Service::cluster_ip("bench", name.clone(), ip).with_port(ServicePort::tcp("http", 80)),
        );
        let mut slice =
            EndpointSlice::new("bench", name.clone(), format!("{name}-1"), IpFamily::Ipv4)
                .with_port(EndpointPort::tcp("http", 8080));
        for j in 0..endpoints {
            let ep = IpAddr::V4(Ipv4Addr::from(0x0ab4_0000u32 + (i * endpoints + j) as u32));
            slice = slice.with_endpoint(Endpoint::ready(ep));
        }
        state.upsert_slice(slice);
    }
    state
}

fn bench(c: &mut Criterion) {
    let config = ProxyConfig::default()
        .with_node_name("node-a")
        .with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
    let mut group = c.benchmark_group("compile+render");
    for (services, endpoints) in [(10, 10), (100, 10), (1000, 10)] {
        let state = cluster(services, endpoints);
        group.throughput(Throughput::Elements(services as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{services}x{endpoints}")),
            &state,
            |b, state| {
                b.iter(|| {
                    let ruleset = svcnat::compile::compile(state, &config).unwrap();
                    let mut out = Vec::with_capacity(1 << 20);
                    svcnat::render::write_io(&ruleset, &mut out).unwrap();
                    out.len()
                })
            },
        );
    }
    group.finish();
    // The two halves apart, at the largest size.
    let state = cluster(1000, 10);
    c.bench_function("compile-only/1000x10", |b| {
        b.iter(|| svcnat::compile::compile(&state, &config).unwrap())
    });
    let ruleset = svcnat::compile::compile(&state, &config).unwrap();
    c.bench_function("render-only/1000x10", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1 << 20);
            svcnat::render::write_io(&ruleset, &mut out).unwrap();
            out.len()
        })
    });
}

/// A one-endpoint change in a cluster of growing size: the partial sync's cost
/// should stay flat while the full compile grows.
fn bench_sync(c: &mut Criterion) {
    let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
    let mut group = c.benchmark_group("partial-sync-one-endpoint");
    for services in [100, 1000, 5000] {
        let state = cluster(services, 10);
        let mut syncer =
            svcnat::sync::Syncer::new(svcnat::exec::DryRun::default(), config.clone()).unwrap();
        syncer.replace_state(state.clone());
        syncer.sync().unwrap();
        let key = ServiceKey::new("bench", "svc7");
        let base = state.slices_of(&key).next().unwrap().clone();
        let mut flip = false;
        group.bench_function(BenchmarkId::from_parameter(services), |b| {
            b.iter(|| {
                let mut slice = base.clone();
                flip = !flip;
                if flip {
                    slice.endpoints.pop();
                }
                syncer.upsert_slice(slice);
                let report = syncer.sync().unwrap();
                syncer.executor_mut().payloads.clear();
                report.bytes
            })
        });
    }
    group.finish();
}

/// One service with `ports` ports (every name and number distinct) and one slice
/// with all of them and three endpoints.
fn many_ports(ports: u16) -> ClusterState {
    let mut state = ClusterState::new();
    let mut svc = Service::cluster_ip("bench", "wide", IpAddr::V4(Ipv4Addr::new(172, 30, 0, 1)));
    let mut slice = EndpointSlice::new("bench", "wide", "wide-1", IpFamily::Ipv4);
    for i in 1..=ports {
        svc = svc.with_port(ServicePort::tcp(format!("p{i}"), i));
        slice = slice.with_port(EndpointPort::tcp(format!("p{i}"), i));
    }
    for j in 1..=3 {
        slice = slice.with_endpoint(Endpoint::ready(IpAddr::V4(Ipv4Addr::new(10, 180, 0, j))));
    }
    state.upsert_service(svc);
    state.upsert_slice(slice);
    state
}

/// A service with many ports: validation and the endpoint lookup must stay
/// O(n log n) in its ports (pairwise checks took 18 s at 65,535).
fn bench_many_ports(c: &mut Criterion) {
    let config = ProxyConfig::default().with_cluster_cidrs(["10.0.0.0/8".parse().unwrap()]);
    let mut group = c.benchmark_group("compile-one-service-many-ports");
    group.sample_size(10);
    for ports in [1_000u16, 65_535] {
        let state = many_ports(ports);
        group.throughput(Throughput::Elements(u64::from(ports)));
        group.bench_with_input(BenchmarkId::from_parameter(ports), &state, |b, state| {
            b.iter(|| svcnat::compile::compile_text(state, &config).unwrap().len())
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_sync, bench_many_ports);
criterion_main!(benches);
