//! Retry timing for one deferred message: exponential backoff, capped, with jitter, until a
//! maximum age after which the message expires (and the daemon bounces it with a DSN).

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::SettingError;

/// How long to wait between delivery attempts and when to give up: the `[retry]` table of
/// the configuration file, deserialized straight into this type so that the file and the
/// scheduler have one set of defaults (the documented ones, in `mxpipe.example.toml`). The
/// config checks the ranges given below when the file is read.
///
/// The wait after attempt `n` (counting from 1) is `initial × factor^(n-1)`, capped at
/// `max_interval`, then spread by ±`jitter` so messages deferred together (one 4xx for a whole
/// batch) do not all come back in the same second. The cap applies before the jitter, so at
/// the cap waits spread over `max_interval × (1 ± jitter)` rather than piling up at exactly
/// `max_interval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Wait before the first retry, 1s to 1d. Default `"5m"` (Postfix's
    /// `minimal_backoff_time`: a greylisting receiver wants a few minutes, not one).
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub initial: Duration,
    /// Growth of each wait over the previous one, 1 to 10 (a smaller or NaN factor counts as
    /// 1.0 here). Default 2.0.
    pub factor: f64,
    /// Longest wait between two attempts (before jitter), at least `initial`, at most 7d.
    /// Default `"1h"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub max_interval: Duration,
    /// Age (from the first attempt) at which a message is bounced with a DSN instead of
    /// tried again, at least `initial`, at most 30d. Default `"5d"`.
    #[serde(deserialize_with = "crate::value::duration::deserialize")]
    pub max_age: Duration,
    /// Random spread of each wait, as a fraction from 0 to 1 (0.2: ±20%), so that a burst that
    /// failed together does not retry together. Clamped to 0.0..=1.0 here. Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(5 * 60),
            factor: 2.0,
            max_interval: Duration::from_secs(3600),
            max_age: Duration::from_secs(5 * 24 * 3600),
            jitter: 0.2,
        }
    }
}

/// What to do with a message whose attempt just failed temporarily.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Try again at this instant.
    RetryAt(Instant),
    /// The next attempt would come after `max_age`: give up and bounce with a DSN.
    Expire,
}

impl RetryPolicy {
    /// Reject settings that cannot be what the operator meant, naming the setting.
    pub fn validate(&self) -> Result<(), SettingError> {
        if self.initial.is_zero() {
            return Err(SettingError::new("initial", "must be longer than zero"));
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(SettingError::new("factor", format!("{} is not a finite number >= 1.0", self.factor)));
        }
        if self.max_interval < self.initial {
            return Err(SettingError::new("max_interval", "must not be shorter than initial"));
        }
        if self.max_age < self.initial {
            return Err(SettingError::new("max_age", "must not be shorter than initial"));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(SettingError::new("jitter", format!("{} is not in 0.0..1.0 (0.2 means ±20%)", self.jitter)));
        }
        Ok(())
    }

    /// The wait after `attempts_so_far` failed attempts, before jitter. Zero attempts counts
    /// as one: the daemon asks only after a failure. Never overflows: huge attempt counts or
    /// factors give `max_interval`.
    pub fn interval(&self, attempts_so_far: u32) -> Duration {
        let cap = self.max_interval;
        let initial = self.initial.min(cap);
        let exp = attempts_so_far.saturating_sub(1);
        // `!(x >= 1.0)` is also true for NaN.
        let factor = if self.factor.is_nan() || self.factor < 1.0 { 1.0 } else { self.factor };
        if exp == 0 || factor == 1.0 || initial.is_zero() {
            return initial;
        }
        let exp = i32::try_from(exp).unwrap_or(i32::MAX);
        // Infinity (or anything too large for a Duration) fails the conversion: that is the cap.
        let secs = initial.as_secs_f64() * factor.powi(exp);
        Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
    }

    /// When to try a message again after `attempts_so_far` failed attempts, the first of them
    /// at `first_attempt_at`; `rng_u64` is any uniformly random number from the caller and
    /// only spreads the wait. [`Decision::Expire`] when that instant would lie after
    /// `first_attempt_at + max_age`; an attempt exactly at `max_age` is still made.
    pub fn next_attempt(&self, attempts_so_far: u32, first_attempt_at: Instant, now: Instant, rng_u64: u64) -> Decision {
        let wait = jittered(self.interval(attempts_so_far), self.jitter, rng_u64);
        // An instant too far away to represent is certainly past any maximum age.
        let Some(at) = now.checked_add(wait) else { return Decision::Expire };
        match first_attempt_at.checked_add(self.max_age) {
            Some(deadline) if at > deadline => Decision::Expire,
            _ => Decision::RetryAt(at),
        }
    }
}

/// `base` scaled by a factor in `[1 - jitter, 1 + jitter)` chosen by `rng_u64`.
fn jittered(base: Duration, jitter: f64, rng_u64: u64) -> Duration {
    let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    if jitter == 0.0 || base.is_zero() {
        // Exact: no float round trip, so zero-jitter schedules are whole seconds.
        return base;
    }
    // The top 53 bits as a uniform fraction in [0, 1).
    let unit = (rng_u64 >> 11) as f64 / (1u64 << 53) as f64;
    let scale = 1.0 + jitter * (2.0 * unit - 1.0);
    Duration::try_from_secs_f64(base.as_secs_f64() * scale).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// The default policy with a one-minute first wait, the round numbers the arithmetic
    /// tests below are written in.
    fn minute() -> RetryPolicy {
        RetryPolicy { initial: S(60), ..RetryPolicy::default() }
    }

    fn exact() -> RetryPolicy {
        RetryPolicy { jitter: 0.0, ..minute() }
    }

    #[test]
    fn defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.initial, S(300));
        assert_eq!(p.factor, 2.0);
        assert_eq!(p.max_interval, S(3600));
        assert_eq!(p.max_age, 5 * DAY);
        assert_eq!(p.jitter, 0.2);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn backoff_sequence_without_jitter() {
        let p = exact();
        let t0 = Instant::now();
        let want = [60, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600];
        for (n, secs) in want.into_iter().enumerate() {
            let n = n as u32;
            assert_eq!(p.interval(n), S(secs), "attempt {n}");
            // The rng value does not matter without jitter.
            for rng in [0, 1 << 63, u64::MAX] {
                assert_eq!(p.next_attempt(n, t0, t0, rng), Decision::RetryAt(t0 + S(secs)), "attempt {n}");
            }
        }
        // The wait counts from now, not from the first attempt.
        let now = t0 + S(1000);
        assert_eq!(p.next_attempt(3, t0, now, 7), Decision::RetryAt(now + S(240)));
    }

    #[test]
    fn other_factors_and_a_small_cap() {
        let p = RetryPolicy { initial: S(10), factor: 3.0, max_interval: S(100), jitter: 0.0, ..RetryPolicy::default() };
        let got: Vec<u64> = (1..=5).map(|n| p.interval(n).as_secs()).collect();
        assert_eq!(got, [10, 30, 90, 100, 100]);
        let flat = RetryPolicy { factor: 1.0, ..exact() };
        assert_eq!(flat.interval(50), S(60));
        // Bad factors never shrink the wait or panic.
        for f in [0.5, 0.0, -2.0, f64::NAN] {
            assert_eq!(RetryPolicy { factor: f, ..exact() }.interval(9), S(60), "{f}");
        }
        assert_eq!(RetryPolicy { factor: f64::INFINITY, ..exact() }.interval(2), S(3600));
        // An initial wait above the cap is capped too.
        assert_eq!(RetryPolicy { initial: S(7200), ..exact() }.interval(1), S(3600));
        assert_eq!(RetryPolicy { initial: Duration::ZERO, ..exact() }.interval(30), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let p = minute();
        let t0 = Instant::now();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in [1u32, 2, 4, 7, 12, 1000] {
            let base = p.interval(n).as_secs_f64();
            let (mut lo, mut hi) = (f64::MAX, 0.0f64);
            for _ in 0..10_000 {
                // xorshift64: deterministic, no dependency.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let Decision::RetryAt(at) = p.next_attempt(n, t0, t0, x) else { panic!("expired") };
                let w = (at - t0).as_secs_f64();
                assert!(w >= base * 0.8 - 1e-6 && w <= base * 1.2 + 1e-6, "attempt {n}: {w} vs {base}");
                lo = lo.min(w);
                hi = hi.max(w);
            }
            // Ten thousand draws cover nearly the whole range.
            assert!(lo < base * 0.81 && hi > base * 1.19, "attempt {n}: {lo}..{hi}");
        }
        // The extremes of the random number map to the ends of the range.
        let at = |rng| match p.next_attempt(1, t0, t0, rng) {
            Decision::RetryAt(at) => (at - t0).as_secs_f64(),
            Decision::Expire => panic!("expired"),
        };
        assert!((at(0) - 48.0).abs() < 1e-6);
        assert!((at(u64::MAX) - 72.0).abs() < 1e-6);
        assert!((at(1 << 63) - 60.0).abs() < 1e-6);
    }

    #[test]
    fn jitter_is_clamped() {
        let t0 = Instant::now();
        for (j, lo, hi) in [(5.0, 0.0, 120.0), (-1.0, 60.0, 60.0), (f64::NAN, 60.0, 60.0)] {
            let p = RetryPolicy { jitter: j, ..minute() };
            for rng in [0, 1 << 62, 1 << 63, u64::MAX] {
                let Decision::RetryAt(at) = p.next_attempt(1, t0, t0, rng) else { panic!() };
                let w = (at - t0).as_secs_f64();
                assert!(w >= lo - 1e-6 && w <= hi + 1e-6, "jitter {j}: {w}");
            }
        }
    }

    #[test]
    fn expires_after_max_age_exactly() {
        let p = exact();
        let t0 = Instant::now();
        let deadline = t0 + 5 * DAY;
        // Attempt 20 waits the capped hour.
        let last_ok = deadline - S(3600);
        assert_eq!(p.next_attempt(20, t0, last_ok, 0), Decision::RetryAt(deadline));
        assert_eq!(p.next_attempt(20, t0, last_ok + Duration::from_nanos(1), 0), Decision::Expire);
        assert_eq!(p.next_attempt(20, t0, deadline, 0), Decision::Expire);
        assert_eq!(p.next_attempt(20, t0, deadline + DAY, 0), Decision::Expire);
        // A short wait still fits where a long one does not.
        let now = deadline - S(100);
        assert_eq!(p.next_attempt(1, t0, now, 0), Decision::RetryAt(now + S(60)));
        assert_eq!(p.next_attempt(2, t0, now, 0), Decision::Expire);
        // max_age zero: the first retry is already too late.
        let none = RetryPolicy { max_age: Duration::ZERO, ..exact() };
        assert_eq!(none.next_attempt(1, t0, t0, 0), Decision::Expire);
    }

    #[test]
    fn huge_attempt_counts_and_durations_do_not_overflow() {
        let p = RetryPolicy::default();
        let t0 = Instant::now();
        for n in [31, 64, 1023, 1024, 1025, 10_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(p.interval(n), S(3600), "{n}");
            assert!(matches!(p.next_attempt(n, t0, t0, u64::MAX), Decision::RetryAt(_)), "{n}");
        }
        // Unbounded cap: the wait becomes unrepresentable, which is past any maximum age.
        let wild = RetryPolicy { max_interval: Duration::MAX, max_age: Duration::MAX, ..exact() };
        assert_eq!(wild.interval(10_000), Duration::MAX);
        assert_eq!(wild.next_attempt(10_000, t0, t0, 0), Decision::Expire);
        // A maximum age too long to add to an instant never expires.
        let forever = RetryPolicy { max_age: Duration::MAX, ..exact() };
        assert_eq!(forever.next_attempt(10_000, t0, t0 + 400 * DAY, 0), Decision::RetryAt(t0 + 400 * DAY + S(3600)));
        // A clock that ran backwards (now before the first attempt) is harmless.
        assert_eq!(exact().next_attempt(1, t0 + DAY, t0, 0), Decision::RetryAt(t0 + S(60)));
    }

    #[test]
    fn validate_names_the_setting() {
        let ok = RetryPolicy::default();
        let cases = [
            (RetryPolicy { initial: Duration::ZERO, ..ok.clone() }, "initial"),
            (RetryPolicy { factor: 0.5, ..ok.clone() }, "factor"),
            (RetryPolicy { factor: f64::NAN, ..ok.clone() }, "factor"),
            (RetryPolicy { factor: f64::INFINITY, ..ok.clone() }, "factor"),
            (RetryPolicy { max_interval: S(30), ..ok.clone() }, "max_interval"),
            (RetryPolicy { max_age: S(30), ..ok.clone() }, "max_age"),
            (RetryPolicy { jitter: 1.0, ..ok.clone() }, "jitter"),
            (RetryPolicy { jitter: -0.1, ..ok.clone() }, "jitter"),
            (RetryPolicy { jitter: f64::NAN, ..ok.clone() }, "jitter"),
        ];
        for (p, setting) in cases {
            let err = p.validate().unwrap_err();
            assert_eq!(err.setting, setting);
            assert!(err.to_string().starts_with(&format!("{setting}: ")), "{err}");
        }
        assert_eq!(RetryPolicy { jitter: 0.0, factor: 1.0, ..ok }.validate(), Ok(()));
    }
}
