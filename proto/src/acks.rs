//! Answers on a report stream: how long an agent waits for one, and how
//! many reports an Ack answers (an aggregator may hold an accepted
//! report's Ack and answer a later report instead).

use std::time::Duration;

use crate::channel::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
use crate::v1::Ack;

/// How long an agent waits for an answer after a report before it gives
/// the stream up as stalled: three periods, at least 5 s and at most 40 s
/// (an HTTP/2 keep-alive's ping interval and answer time together). A
/// stream carries a report every period and the aggregator answers within
/// this bound (each report carries it as `answer_within_ms`; an aggregator
/// answers one report of several when nothing is new, sparing the agent a
/// wakeup for each), so this finds a lost connection as soon as pings
/// would, and the stream needs none: their timer would wake the agent
/// between reports.
pub fn answer_deadline(period: Duration) -> Duration {
    (period * 3).clamp(Duration::from_secs(5), ANSWER_DEADLINE_MAX)
}

/// The longest [`answer_deadline`]: as long as a keep-alive ping takes to
/// find a lost connection.
pub const ANSWER_DEADLINE_MAX: Duration = KEEPALIVE_INTERVAL.saturating_add(KEEPALIVE_TIMEOUT);

/// [`answer_deadline`] as a report's `answer_within_ms`.
pub fn answer_within_ms(period: Duration) -> u64 {
    u64::try_from(answer_deadline(period).as_millis()).unwrap_or(u64::MAX)
}

/// The reports of one stream answered so far: an accepted Ack answers
/// every report up to its sequence not answered before, a refusal its own.
#[derive(Debug, Default)]
pub struct Answered {
    /// The highest sequence answered.
    to: u64,
}

impl Answered {
    /// How many reports `ack` answers; notes them as answered.
    pub fn count(&mut self, ack: &Ack) -> u64 {
        let reports = if ack.accepted {
            ack.sequence.saturating_sub(self.to).max(1)
        } else {
            1
        };
        self.to = self.to.max(ack.sequence);
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_answered_within_three_periods_and_40_s() {
        let s = Duration::from_secs;
        assert_eq!(answer_deadline(s(1)), s(5));
        assert_eq!(answer_deadline(s(10)), s(30));
        assert_eq!(answer_deadline(s(15)), s(40));
        assert_eq!(answer_deadline(s(3600)), ANSWER_DEADLINE_MAX);
    }

    #[test]
    fn an_accepted_ack_answers_every_report_up_to_its_sequence() {
        let ack = |sequence, accepted| Ack {
            sequence,
            accepted,
            error: String::new(),
        };
        let mut answered = Answered::default();
        assert_eq!(answered.count(&ack(1, true)), 1);
        // Reports 2 and 3 held, answered by 3's Ack.
        assert_eq!(answered.count(&ack(3, true)), 2);
        // A refusal answers its own report alone.
        assert_eq!(answered.count(&ack(4, false)), 1);
        assert_eq!(answered.count(&ack(6, true)), 2);
        // An Ack that answers nothing new (a repeat) still counts once.
        assert_eq!(answered.count(&ack(6, true)), 1);
        assert_eq!(answered.to, 6);
    }
}
