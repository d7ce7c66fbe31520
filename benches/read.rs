//! Reading a cluster dump (`svcnat::k8s::read`): a kubectl `List` of 20,000
//! ClusterIP services with 10 endpoints each and realistic metadata (74 MB), from
//! a reader and from bytes in memory (criterion).
//!
//! `cargo bench --features k8s,synthetic --bench read`; `SVCNAT_READ_SERVICES=2000` for a
//! smaller dump. The memory bound is pinned in `tests/read_memory.rs`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use svcnat::synthetic::{Spec, write_kubectl_list};

fn bench(c: &mut Criterion) {
    let services = std::env::var("SVCNAT_READ_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let state = Spec::new(services, 10).build();
    let mut dump = Vec::new();
    write_kubectl_list(&state, &mut dump).unwrap();
    eprintln!(
        "dump: {services} services x 10 endpoints, {} bytes",
        dump.len()
    );
    assert_eq!(svcnat::k8s::read_slice(&dump).unwrap().state, state);
    let mut group = c.benchmark_group("read");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(dump.len() as u64));
    group.bench_function(format!("reader/{services}x10"), |b| {
        b.iter(|| svcnat::k8s::read(std::io::BufReader::new(&dump[..])).unwrap())
    });
    group.bench_function(format!("slice/{services}x10"), |b| {
        b.iter(|| svcnat::k8s::read_slice(&dump).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
