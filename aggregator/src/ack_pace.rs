//! When an agent stream's Acks go out. Each answer wakes the agent, and at
//! 15 s a separate wakeup for an Ack that says "accepted" again was about a
//! sixth of the agent's CPU. An agent that says how long it waits for an
//! answer (`NodeReport.answer_within_ms`) gets one only as often as that
//! bound needs, and at once whenever there is news: a refusal, a changed
//! note, the stream's first accepted report. A held Ack is sent by its due
//! time even if no report comes to carry it.

use std::time::{Duration, Instant};

use metrics_proto::v1::Ack;

/// Longest wait honoured, whatever the agent asks: a stream is never left
/// unanswered longer than this.
pub const MAX_ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Least time kept in hand before the agent's bound: for the replica's
/// ingest batching, a loaded machine's timers and the way back.
pub const MIN_MARGIN: Duration = Duration::from_millis(1500);

/// What to do with a report's Ack.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send this Ack now.
    Send(Ack),
    /// Hold it; send it by `due` unless a later answer goes first.
    Hold { due: Instant },
}

/// The pacing of one stream's Acks.
#[derive(Debug, Default)]
pub struct AckPace {
    /// The Ack held back (the latest accepted report's) and since when the
    /// oldest report it answers has waited.
    held: Option<(Ack, Instant)>,
    /// Whether an accepted report was answered on this stream yet.
    answered: bool,
    /// The note (`Ack.error`) of the last accepted Ack sent.
    last_note: String,
    /// How long the agent waits for an answer, as its last report said.
    within: Duration,
}

impl AckPace {
    /// Decides on `ack`, the answer to a report received at `now` from an
    /// agent with period `period` that waits `answer_within` for an answer
    /// (zero: it wants every report answered); `news` (a new shard map
    /// goes with it) sends it at once.
    pub fn decide(
        &mut self,
        ack: Ack,
        now: Instant,
        period: Duration,
        answer_within: Duration,
        news: bool,
    ) -> Decision {
        self.within = answer_within;
        let at_once = news
            || answer_within.is_zero()
            || !ack.accepted
            || !self.answered
            || ack.error != self.last_note;
        let since = self.held.as_ref().map_or(now, |(_, since)| *since);
        let due = since + answer_by(answer_within);
        // Held only when the next report is due before the answer is: that
        // report's Ack then goes instead. (A period past the clock's range
        // is never due before.)
        let next_before_due = now.checked_add(period).is_some_and(|next| next < due);
        if at_once || !next_before_due {
            return Decision::Send(self.sent(ack));
        }
        self.held = Some((ack, since));
        Decision::Hold { due }
    }

    /// The held Ack, to send now (its due time came with no report).
    pub fn take_held(&mut self) -> Option<Ack> {
        let (ack, _) = self.held.take()?;
        Some(self.sent(ack))
    }

    /// When the held Ack must go, if one is held.
    pub fn due(&self) -> Option<Instant> {
        self.held
            .as_ref()
            .map(|(_, since)| *since + answer_by(self.within))
    }

    /// Notes `ack` as sent (a refusal answers only its report; anything
    /// held still waits for an accepted answer).
    fn sent(&mut self, ack: Ack) -> Ack {
        if ack.accepted {
            self.held = None;
            self.answered = true;
            self.last_note.clone_from(&ack.error);
        }
        ack
    }
}

/// How long after the oldest unanswered report its answer goes at the
/// latest: the agent's bound (capped at [`MAX_ANSWER_WITHIN`]) less an
/// eighth of it, and at least [`MIN_MARGIN`] less. At 15 s (a 40 s bound)
/// every third report is answered, 30 s after the oldest it answers; at
/// 1 s (5 s) every fourth, after 3 s.
pub fn answer_by(answer_within: Duration) -> Duration {
    let within = answer_within.min(MAX_ANSWER_WITHIN);
    within.saturating_sub((within / 8).max(MIN_MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(sequence: u64) -> Ack {
        Ack {
            sequence,
            accepted: true,
            error: String::new(),
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Feeds reports every `period` for `n` periods; returns the sequence
    /// numbers answered and, for each, how long the oldest report it
    /// answered had waited.
    fn run(period: Duration, within: Duration, n: u64) -> Vec<(u64, Duration)> {
        let start = Instant::now();
        let mut pace = AckPace::default();
        let mut out = Vec::new();
        let mut oldest: Option<Instant> = None;
        for seq in 1..=n {
            let now = start + period * (seq as u32 - 1);
            // A held Ack that fell due before this report went out alone.
            if let Some(due) = pace.due().filter(|d| *d <= now) {
                let held = pace.take_held().expect("an Ack is held");
                out.push((held.sequence, due - oldest.take().unwrap_or(due)));
            }
            oldest.get_or_insert(now);
            match pace.decide(ack(seq), now, period, within, false) {
                Decision::Send(a) => {
                    out.push((a.sequence, now - oldest.take().unwrap_or(now)));
                }
                Decision::Hold { due } => assert!(due > now),
            }
        }
        out
    }

    #[test]
    fn without_a_bound_every_report_is_answered() {
        let answered = run(s(15), Duration::ZERO, 6);
        let seqs: Vec<u64> = answered.iter().map(|a| a.0).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn at_15_s_every_third_report_is_answered_well_within_the_bound() {
        // The agent's bound at 15 s is 40 s.
        let answered = run(s(15), s(40), 10);
        let seqs: Vec<u64> = answered.iter().map(|a| a.0).collect();
        assert_eq!(seqs, [1, 4, 7, 10]);
        for (seq, waited) in answered {
            assert!(waited <= s(30), "report {seq}'s answer after {waited:?}");
        }
    }

    #[test]
    fn at_1_s_answers_come_within_the_5_s_bound_less_the_margin() {
        let answered = run(s(1), s(5), 20);
        assert!(answered.len() < 10, "{answered:?}");
        for (seq, waited) in answered {
            assert!(
                waited <= s(5) - MIN_MARGIN,
                "report {seq}'s answer after {waited:?}"
            );
        }
    }

    #[test]
    fn a_period_longer_than_the_bound_has_every_report_answered() {
        let answered = run(s(60), s(40), 4);
        assert_eq!(answered.len(), 4);
    }

    /// A stream at 15 s whose first accepted report, at `t`, was answered
    /// at once.
    fn answered_first(t: Instant, within: Duration) -> AckPace {
        let mut pace = AckPace::default();
        assert!(matches!(
            pace.decide(ack(1), t, s(15), within, false),
            Decision::Send(_)
        ));
        pace
    }

    #[test]
    fn news_is_answered_at_once() {
        let t = Instant::now();
        let within = s(40);
        let mut pace = answered_first(t, within);
        assert!(matches!(
            pace.decide(ack(2), t + s(15), s(15), within, false),
            Decision::Hold { .. }
        ));
        // A refusal goes at once and leaves the held Ack held.
        let refused = Ack {
            sequence: 3,
            accepted: false,
            error: "no".into(),
        };
        assert_eq!(
            pace.decide(refused.clone(), t + s(16), s(15), within, false),
            Decision::Send(refused)
        );
        assert!(pace.due().is_some());
        // A new note goes at once, and answers the held report with it.
        let noted = Ack {
            sequence: 4,
            accepted: true,
            error: "accepted without pod a/b".into(),
        };
        assert_eq!(
            pace.decide(noted.clone(), t + s(30), s(15), within, false),
            Decision::Send(noted.clone())
        );
        assert_eq!(pace.due(), None);
        // The same note again is no news.
        let again = Ack {
            sequence: 5,
            ..noted
        };
        assert!(matches!(
            pace.decide(again, t + s(45), s(15), within, false),
            Decision::Hold { .. }
        ));
    }

    #[test]
    fn a_held_ack_falls_due_when_reports_stop() {
        let t = Instant::now();
        let within = s(40);
        let mut pace = answered_first(t, within);
        let Decision::Hold { due } = pace.decide(ack(2), t + s(15), s(15), within, false) else {
            panic!("the second report's Ack is held");
        };
        assert_eq!(due, t + s(15) + answer_by(within));
        assert!(due < t + s(15) + within, "before the agent gives up");
        assert_eq!(pace.take_held().map(|a| a.sequence), Some(2));
        assert_eq!(pace.take_held(), None);
    }

    #[test]
    fn any_period_is_answered_without_overflow() {
        let t = Instant::now();
        let mut pace = AckPace::default();
        assert!(matches!(
            pace.decide(ack(1), t, Duration::MAX, s(40), false),
            Decision::Send(_)
        ));
        assert!(matches!(
            pace.decide(ack(2), t, Duration::MAX, Duration::MAX, false),
            Decision::Send(_)
        ));
    }

    #[test]
    fn the_wait_honoured_is_capped() {
        assert_eq!(
            answer_by(Duration::from_secs(3600)),
            answer_by(MAX_ANSWER_WITHIN)
        );
        assert_eq!(answer_by(Duration::from_millis(500)), Duration::ZERO);
    }
}
