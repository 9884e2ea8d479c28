//! Small system helpers for the benchmark: clocks, CPU time, affinity, socket buffers.

use std::io;
use std::mem;
use std::os::fd::RawFd;

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every thread of the process).
pub fn now_ns() -> u64 {
    // SAFETY (zeroed): timespec is two integers.
    let mut ts: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: `ts` is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC in nanoseconds: turns the kernel's receive time stamps
/// (`SO_TIMESTAMPNS`, real time) into the monotonic time the generator stamps packets with.
pub fn realtime_offset_ns() -> i128 {
    // SAFETY (zeroed): timespec is two integers.
    let mut rt: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: `rt` is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut rt) };
    let mono = now_ns();
    i128::from(rt.tv_sec) * 1_000_000_000 + i128::from(rt.tv_nsec) - i128::from(mono)
}

/// Sets the PM QoS CPU latency limit to `us` microseconds for as long as the returned file
/// stays open (root only). With 0, idle CPUs poll instead of halting, so a wake-up costs no
/// exit to the hypervisor: the usual low-latency tuning of a media host.
pub fn hold_cpu_latency(us: i32) -> io::Result<std::fs::File> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")?;
    f.write_all(&us.to_ne_bytes())?;
    Ok(f)
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a live timespec; interruptions just end the sleep early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// User + system CPU time of a process, in seconds, from `/proc/<pid>/stat` (fields 14 and
/// 15, in clock ticks). Includes the time of threads that already exited.
pub fn process_cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unexpected /proc stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14 -> index 11.
    let tick = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| io::Error::other("missing utime/stime in /proc stat"))
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((tick(11)? + tick(12)?) / hz)
}

/// A CPU set from a list such as `1` or `0,2-3`.
pub fn parse_cpus(list: &str) -> Option<libc::cpu_set_t> {
    // SAFETY (zeroed): cpu_set_t is a bit array.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    let mut any = false;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let c = part.parse::<usize>().ok()?;
                (c, c)
            }
        };
        for c in lo..=hi.min(1023) {
            // SAFETY: `c` < 1024, the size of cpu_set_t.
            unsafe { libc::CPU_SET(c, &mut set) };
            any = true;
        }
    }
    any.then_some(set)
}

/// Pins the calling thread (and the threads it creates later) to `set`.
pub fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is a live cpu_set_t of the size given.
    let r = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), set) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Number of CPUs online.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Large socket buffers, so that the load generator's sockets never drop.
pub fn grow_buffers(fd: RawFd, bytes: i32) {
    for opt in [
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUFFORCE,
        libc::SO_RCVBUF,
        libc::SO_SNDBUF,
    ] {
        // SAFETY: passes a live i32 of the right size; failure leaves the default.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                mem::size_of::<i32>() as libc::socklen_t,
            )
        };
    }
}

/// Raises the open-file limit as far as allowed (root may go past the hard limit).
pub fn raise_nofile(want: u64) -> u64 {
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: `lim` is a live rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return want;
    }
    media::raise_nofile_limit().unwrap_or(0)
}

/// Busy time (everything but idle and iowait, softirq included) of the CPUs in `set`, in
/// seconds, from `/proc/stat`.
pub fn cpus_busy_seconds(set: &libc::cpu_set_t) -> io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut busy = 0u64;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<usize>() else {
            continue; // the "cpu" total line
        };
        // SAFETY: CPU_ISSET reads the bit array; `cpu` is checked against its size.
        if cpu >= 1024 || !unsafe { libc::CPU_ISSET(cpu, set) } {
            continue;
        }
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 8 {
            continue;
        }
        // user nice system idle iowait irq softirq steal
        busy += v[0] + v[1] + v[2] + v[5] + v[6];
    }
    Ok(busy as f64 / hz)
}

/// Real-time FIFO scheduling for the calling thread and the threads and children it creates.
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `p` is a live sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Back to normal (SCHED_OTHER) scheduling for the calling thread.
pub fn set_normal() {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: `p` is a live sched_param; failure leaves the policy as it was.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &p) };
}
