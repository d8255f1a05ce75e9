//! The last minutes of each projection's lag and throughput, kept in memory for the console's
//! chart (`GET /projections/{name}/history`).
//!
//! Invariants:
//! - Bounded memory: one ring of at most [`MAX_SAMPLES`] samples per projection this host runs
//!   (the set is fixed at start), none older than [`WINDOW`]; a new sample pushes out the oldest.
//! - Costs no query: a sample reads the gauges the metrics refresh has just set (one query for
//!   every gauge, `projector_store::outbox::status::gauges`) and this host's success counter.
//!   It is taken after each refresh, at most one per [`MIN_SPACING`].
//! - Lag, oldest age, stuck and blocked are the database's (every host sees the same numbers);
//!   throughput is this host's: the events it settled `done` since the previous sample, per
//!   second. Lost on restart, like the counters it comes from.

use crate::metrics::Metrics;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back the history reaches.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// The most samples kept per projection.
pub const MAX_SAMPLES: usize = 600;
/// The least time between two samples.
pub const MIN_SPACING: Duration = Duration::from_secs(1);

/// One point of the chart.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    /// When (Unix time, seconds).
    pub at: f64,
    /// Unfinished events (pending or processing).
    pub lag: i64,
    /// Age of the oldest unfinished event, in seconds.
    pub oldest_age_seconds: f64,
    /// Processing under an expired lease.
    pub stuck: i64,
    /// Pending behind a failed event of their aggregate.
    pub blocked: i64,
    /// Events this host settled `done` per second since the previous sample.
    pub done_per_second: f64,
}

struct Ring {
    samples: VecDeque<(Instant, Sample)>,
    /// This host's success counter at the last sample, and when that was.
    last_done: Option<(Instant, u64)>,
}

/// Every projection's samples.
pub struct History {
    rings: Mutex<HashMap<String, Ring>>,
}

impl History {
    /// An empty history for `projections`.
    pub fn new(projections: &[String]) -> History {
        let rings = projections
            .iter()
            .map(|p| {
                let ring = Ring {
                    samples: VecDeque::with_capacity(MAX_SAMPLES),
                    last_done: None,
                };
                (p.clone(), ring)
            })
            .collect();
        History {
            rings: Mutex::new(rings),
        }
    }

    /// Takes a sample of every projection from `metrics`, unless the last one is younger than
    /// [`MIN_SPACING`].
    pub fn record(&self, metrics: &Metrics) {
        let now = Instant::now();
        let at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        for (projection, ring) in rings.iter_mut() {
            if ring
                .samples
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t) < MIN_SPACING)
            {
                continue;
            }
            let label = [projection.as_str()];
            let done = metrics.dispatch_success.with_label_values(&label).get();
            let done_per_second = match ring.last_done {
                Some((then, before)) if now > then => {
                    done.saturating_sub(before) as f64 / now.duration_since(then).as_secs_f64()
                }
                _ => 0.0,
            };
            ring.last_done = Some((now, done));
            let sample = Sample {
                at,
                lag: metrics.lag.with_label_values(&label).get(),
                oldest_age_seconds: metrics.oldest_age.with_label_values(&label).get(),
                stuck: metrics.stuck.with_label_values(&label).get(),
                blocked: metrics.blocked.with_label_values(&label).get(),
                done_per_second,
            };
            push(&mut ring.samples, now, sample);
        }
    }

    /// `projection`'s samples, oldest first; `None` when this host does not run it.
    pub fn samples(&self, projection: &str) -> Option<Vec<Sample>> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        rings
            .get(projection)
            .map(|r| r.samples.iter().map(|(_, s)| *s).collect())
    }
}

/// Appends `sample` taken at `now`, dropping what is older than [`WINDOW`] or beyond
/// [`MAX_SAMPLES`].
fn push(samples: &mut VecDeque<(Instant, Sample)>, now: Instant, sample: Sample) {
    while samples
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        || samples.len() >= MAX_SAMPLES
    {
        samples.pop_front();
    }
    samples.push_back((now, sample));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lag: i64) -> Sample {
        Sample {
            at: 0.0,
            lag,
            oldest_age_seconds: 0.0,
            stuck: 0,
            blocked: 0,
            done_per_second: 0.0,
        }
    }

    #[test]
    fn the_ring_keeps_at_most_max_samples_and_drops_the_oldest() {
        let mut ring = VecDeque::new();
        let start = Instant::now();
        for i in 0..(MAX_SAMPLES as i64 + 25) {
            push(&mut ring, start, sample(i));
        }
        assert_eq!(ring.len(), MAX_SAMPLES);
        assert_eq!(ring.front().unwrap().1.lag, 25);
        assert_eq!(ring.back().unwrap().1.lag, MAX_SAMPLES as i64 + 24);
    }

    #[test]
    fn samples_older_than_the_window_are_dropped() {
        let mut ring = VecDeque::new();
        let start = Instant::now();
        push(&mut ring, start, sample(1));
        push(&mut ring, start + WINDOW / 2, sample(2));
        push(
            &mut ring,
            start + WINDOW + Duration::from_secs(1),
            sample(3),
        );
        let lags: Vec<i64> = ring.iter().map(|(_, s)| s.lag).collect();
        assert_eq!(lags, [2, 3]);
    }

    #[test]
    fn a_sample_reads_the_gauges_and_turns_the_success_counter_into_a_rate() {
        let metrics = Metrics::new("outbox_dispatch");
        metrics.init_projection("p");
        let history = History::new(&["p".to_owned()]);
        metrics.lag.with_label_values(&["p"]).set(7);
        metrics.blocked.with_label_values(&["p"]).set(2);
        history.record(&metrics);
        // Within MIN_SPACING: no second sample.
        history.record(&metrics);
        let first = history.samples("p").unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(
            (first[0].lag, first[0].blocked, first[0].done_per_second),
            (7, 2, 0.0)
        );
        std::thread::sleep(MIN_SPACING + Duration::from_millis(50));
        metrics
            .dispatch_success
            .with_label_values(&["p"])
            .inc_by(10);
        history.record(&metrics);
        let rate = history.samples("p").unwrap()[1].done_per_second;
        assert!(rate > 5.0 && rate <= 10.0, "{rate}");
        assert_eq!(history.samples("other"), None);
    }
}
