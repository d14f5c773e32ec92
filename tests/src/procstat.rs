//! The kernel's own accounting of a process: CPU time (utime + stime from
//! `/proc/PID/stat`) and resident memory (`VmRSS`, and its anonymous part
//! `RssAnon`), for load harnesses.

use procfs::process::Process;

/// CPU time `pid` has used so far, user plus system, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = Process::new(i32::try_from(pid)?)?.stat()?;
    let ticks = stat.utime + stat.stime;
    Ok(ticks as f64 / procfs::ticks_per_second().max(1) as f64)
}

/// Resident set size of `pid`, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(rss_parts_kib(pid)?.0)
}

/// `VmRSS` of `pid` and its anonymous part `RssAnon` (heap, stacks: what
/// it holds besides the pages of files it maps, such as its own code),
/// from one read of its status, KiB.
pub fn rss_parts_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = Process::new(i32::try_from(pid)?)?.status()?;
    match (status.vmrss, status.rssanon) {
        (Some(total), Some(anon)) => Ok((total, anon)),
        _ => anyhow::bail!("no VmRSS or RssAnon for {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_accounted() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        // Burn until the kernel has charged at least one tick more.
        let mut x = 0u64;
        while cpu_seconds(me).unwrap() <= before {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(rss_kib(me).unwrap() > 100);
    }

    #[test]
    fn anonymous_memory_is_part_of_rss_and_follows_the_heap() {
        let me = std::process::id();
        let (_, before) = rss_parts_kib(me).unwrap();
        // 64 MiB written through, so every page is resident. Other tests
        // of this binary run beside it, so the bound leaves them room.
        let held = std::hint::black_box(vec![1u8; 64 << 20]);
        let (rss, during) = rss_parts_kib(me).unwrap();
        assert!(during >= before + (32 << 10), "{before} -> {during} KiB");
        assert!(during <= rss, "RssAnon {during} above VmRSS {rss} KiB");
        drop(held);
    }
}
