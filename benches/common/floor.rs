//! The floor of a full output: what any implementation pays at least for it,
//! measured the same way by the `scale` bench and the `scale` example (each
//! includes this file): writing its bytes, and hashing its chain names
//! (kube-proxy names chains by SHA-256).

use std::hint::black_box;

use sha2::{Digest, Sha256};

/// Every chain `output` declares, by name (`:NAME - [0:0]` lines, every table):
/// read from the output itself, so that the names lie packed in memory, as a
/// hashing floor should have them.
pub fn chain_names(output: &[u8]) -> Vec<&[u8]> {
    output
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b":"))
        .filter_map(|line| line.split(|&b| b == b' ').next())
        .collect()
}

/// The floor's copy: `output` into `buffer`, a buffer of its size already in
/// memory, so that neither the allocator nor the kernel's page faults (which vary
/// with the heap's history) enter the floor. Returns the bytes copied.
///
/// # Panics
///
/// If `buffer` is not `output`'s size.
pub fn copy(buffer: &mut [u8], output: &[u8]) -> usize {
    buffer.copy_from_slice(black_box(output));
    black_box(&*buffer).len()
}

/// The floor's hash: SHA-256 of every name.
pub fn hash(names: &[&[u8]]) {
    for name in black_box(names) {
        black_box(Sha256::digest(name));
    }
}
