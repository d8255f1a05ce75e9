//! The retry policy for transient failures.
//!
//! The delay before attempt `n + 1` (after `n` attempts) is drawn uniformly from
//! `[c/2, c]` with `c = min(max, base · 2^(n-1))`, then clamped to `[base, max]`: it grows
//! exponentially, never drops below the base or exceeds the max, and jitter spreads retries of
//! events that failed together (a sink outage) so they do not come back as one wave.

use rand::Rng;
use std::time::Duration;

/// The delay before the next attempt, given how many attempts were made (1-based).
pub fn retry_delay(attempts: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 62) as u32;
    let ceiling = base.as_secs_f64() * 2f64.powi(exp as i32);
    let ceiling = ceiling.min(max.as_secs_f64());
    let drawn = rand::rng().random_range(ceiling / 2.0..=ceiling);
    Duration::from_secs_f64(drawn.clamp(base.as_secs_f64(), max.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_in_bounds_and_jitter() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(retry_delay(1, base, max), base);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d2 = retry_delay(2, base, max);
            assert!(d2 >= base && d2 <= Duration::from_millis(200), "{d2:?}");
            let d4 = retry_delay(4, base, max);
            assert!(
                d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800),
                "{d4:?}"
            );
            seen.insert(d4.as_micros());
            let d20 = retry_delay(20, base, max);
            assert!(d20 >= Duration::from_secs(1) && d20 <= max, "{d20:?}");
        }
        assert!(seen.len() > 100, "jitter spreads the delays");
    }
}
