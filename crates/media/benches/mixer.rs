//! Cost of one mixed 20 ms frame of a monitored call: the G.711 packets of the agent, the
//! customer and the supervisor decoded into their jitter buffers, one tick of the mixer, and
//! the RTP packets of the listeners encoded (listen: one listener; barge: three).
//!
//! Time is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): on a small machine shared with
//! builds, wall time mostly measures the scheduler. Run with
//! `cargo bench -p media --bench mixer`; method and numbers are in `docs/benchmarks.md`,
//! section "The mixer".

use std::hint::black_box;

use media::g711::{Tone, G711};
use media::mixer::{Mixer, FRAME_SAMPLES};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn packets(hz: f64, law: G711, ssrc: u32, n: usize) -> Vec<Vec<u8>> {
    let mut tone = Tone::new(hz);
    (0..n)
        .map(|k| {
            let mut f = [0i16; FRAME_SAMPLES];
            tone.fill(&mut f);
            let mut p = vec![0x80, law.payload_type()];
            p.extend_from_slice(&(k as u16).to_be_bytes());
            p.extend_from_slice(&((k * FRAME_SAMPLES) as u32).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend(f.iter().map(|&s| law.encode(s)));
            p
        })
        .collect()
}

fn run(name: &str, hears: fn(usize, usize) -> bool, frames: usize) {
    let laws = [G711::Pcmu, G711::Pcma, G711::Pcmu];
    let input: Vec<Vec<Vec<u8>>> = [(440.0, 1u32), (1000.0, 2), (1800.0, 3)]
        .iter()
        .zip(laws)
        .map(|(&(hz, ssrc), law)| packets(hz, law, ssrc, frames))
        .collect();
    let mut m = Mixer::new(&laws, 2, 7);
    let mut bytes = 0usize;
    // Warm-up: a second of audio.
    for k in 0..50 {
        for (p, pk) in input.iter().enumerate() {
            m.push_rtp(p, &pk[k]);
        }
        m.tick(hears, |_| false, |_, pkt| bytes += pkt.len());
    }
    let t0 = cpu_ns();
    for k in 50..frames {
        for (p, pk) in input.iter().enumerate() {
            m.push_rtp(p, black_box(&pk[k]));
        }
        m.tick(hears, |_| false, |_, pkt| bytes += black_box(pkt).len());
    }
    let ns = (cpu_ns() - t0) as f64 / (frames - 50) as f64;
    println!(
        "{name:<8} {ns:>8.0} ns CPU per 20 ms frame (3 packets in, decode + mix + encode); {:.2} % of a core per monitored call; {} bytes out",
        ns / 20_000_000.0 * 100.0,
        black_box(bytes)
    );
}

fn main() {
    let frames = 50_000;
    run("listen", |o, i| o == 2 && i < 2, frames);
    run(
        "whisper",
        |o, i| (o == 2 && i < 2) || (o == 0 && i > 0),
        frames,
    );
    run("barge", |o, i| o != i, frames);
}
