//! The cost of SRTP per packet on the relay's SRTP path (`media::srtp`): protecting a
//! 172-byte G.711 RTP packet (20 ms) for an SRTP leg, and authenticating and decrypting one
//! from it. `cargo bench -p media --bench srtp`; figures in docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use media::srtp::{SrtpKey, SrtpKeys, SrtpLeg};

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

fn srtp(c: &mut Criterion) {
    let (a, b) = (SrtpKey::random(), SrtpKey::random());
    let mut us = SrtpLeg::new(&SrtpKeys {
        local: a.clone(),
        remote: b.clone(),
    })
    .unwrap();
    let mut peer = SrtpLeg::new(&SrtpKeys {
        local: b,
        remote: a,
    })
    .unwrap();
    let mut g = c.benchmark_group("srtp_172_byte_rtp");
    g.throughput(Throughput::Elements(1));
    let mut seq = 0u16;
    g.bench_function("protect", |bench| {
        bench.iter(|| {
            seq = seq.wrapping_add(1);
            us.protect(&rtp(seq), false).unwrap()
        })
    });
    // Packets protected beforehand, each unprotected once (the replay window refuses a
    // second time): the sequence numbers keep going up.
    let mut next = 0u16;
    g.bench_function("unprotect", |bench| {
        bench.iter_batched(
            || {
                next = next.wrapping_add(1);
                peer.protect(&rtp(next), false).unwrap()
            },
            |wire| us.unprotect(&wire, false).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("copy_only_baseline", |bench| {
        bench.iter(|| {
            seq = seq.wrapping_add(1);
            rtp(seq)
        })
    });
    g.finish();
}

criterion_group!(benches, srtp);
criterion_main!(benches);
