//! The agent's period clock: a kernel timer (`timerfd`) watched by the
//! runtime's reactor, so the process wakes once per period.
//!
//! Tokio's timer wheel keeps a timer more than 64 ms away in a coarse
//! slot and wakes the process at that slot's start to move it one level
//! down: a 15 s period cost two such wakeups before every tick, which
//! were a third of the agent's wakeups at that resolution. A `timerfd`
//! fires only at its time. Where one cannot be made (a seccomp profile
//! that refuses it), the wheel's interval is used instead.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Fires at once, then every `period` of the monotonic clock; periods
/// missed while the agent was busy make one tick, not a burst.
pub enum Ticker {
    Kernel(AsyncFd<OwnedFd>),
    Wheel(tokio::time::Interval),
}

impl Ticker {
    /// A kernel timer when one can be made, else the runtime's interval
    /// (logged). Must be called within the runtime.
    pub fn new(period: Duration) -> Self {
        match kernel_timer(period) {
            Ok(fd) => Self::Kernel(fd),
            Err(e) => {
                tracing::info!(error = %e, "no timerfd; the period runs on the runtime's timer");
                Self::wheel(period)
            }
        }
    }

    /// The runtime's interval.
    fn wheel(period: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self::Wheel(tick)
    }

    /// Waits for the next tick; returns how many periods ended since the
    /// last one (1 unless some were missed; always 1 on the wheel).
    pub async fn tick(&mut self) -> u64 {
        match self {
            Self::Wheel(i) => {
                i.tick().await;
                1
            }
            Self::Kernel(fd) => loop {
                let Ok(mut ready) = fd.readable().await else {
                    // The reactor is gone (the runtime is shutting down).
                    return std::future::pending().await;
                };
                let mut count = [0u8; 8];
                match ready.try_io(|fd| Ok(rustix::io::read(fd, &mut count)?)) {
                    Ok(Ok(_)) => {
                        // The read took every expiry: the timer is not
                        // readable again until the next, whose event the
                        // reactor will see.
                        ready.clear_ready();
                        return u64::from_ne_bytes(count);
                    }
                    // Readiness was stale (`try_io` has cleared it): wait
                    // again.
                    Err(_would_block) => {}
                    // A timerfd read fails only on a bad buffer. Taken as
                    // the tick, so a failing timer cannot spin.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "reading the period timer failed");
                        ready.clear_ready();
                        return 1;
                    }
                }
            },
        }
    }
}

fn kernel_timer(period: Duration) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )?;
    let interval = Timespec::try_from(period.max(Duration::from_millis(1)))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "period out of range"))?;
    // An all-zero value would disarm the timer: the first tick is 1 ns away.
    let first = Timespec {
        tv_sec: 0,
        tv_nsec: 1,
    };
    timerfd_settime(
        &fd,
        TimerfdTimerFlags::empty(),
        &Itimerspec {
            it_interval: interval,
            it_value: first,
        },
    )?;
    // Deprecated for types whose descriptor can change or close under the
    // registration (tokio#8587), which the owned one here cannot; its
    // replacement is `unsafe`, which this crate forbids.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, Interest::READABLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test(flavor = "current_thread")]
    async fn the_first_tick_is_at_once() {
        let mut t = Ticker::new(Duration::from_secs(600));
        let first = tokio::time::timeout(Duration::from_secs(30), t.tick()).await;
        assert!(first.is_ok(), "the first tick waited for a period");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn kernel_ticks_come_a_period_apart() {
        let period = Duration::from_millis(50);
        let start = Instant::now();
        let mut t = Ticker::new(period);
        assert!(
            matches!(t, Ticker::Kernel(_)),
            "timerfd is available on Linux"
        );
        for _ in 0..4 {
            t.tick().await;
        }
        // The fourth tick is three periods after the first: never early.
        assert!(start.elapsed() >= period * 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missed_periods_make_one_tick() {
        let period = Duration::from_millis(200);
        let mut t = Ticker::new(period);
        assert!(t.tick().await >= 1);
        // Miss three periods without letting the runtime run.
        std::thread::sleep(period * 3);
        let missed = t.tick().await;
        assert!(missed >= 2, "one tick for the missed periods, got {missed}");
        // The next tick is a single period again.
        assert!(t.tick().await >= 1);
    }
}
