//! The per-process request limiter: a token bucket per user that answers at once. The
//! original queued every caller behind one bucket instead, so a burst turned into
//! timeouts and one client's requests used up everyone's allowance.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl Limiter {
    /// `None` when `per_minute` is 0 (limiting off).
    pub fn per_minute(per_minute: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when `user`'s request must be refused, with how long until one is
    /// allowed.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&user.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets the users whose buckets are full again, so memory follows the number of
    /// recent users, not of all users ever seen. Called every minute.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_burst_per_user_and_says_how_long_to_wait() {
        let limiter = Limiter::per_minute(3, 0);
        let Some(limiter) = limiter else {
            panic!("a positive rate makes a limiter");
        };
        for _ in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
        let wait = limiter.check("a").err().unwrap_or_default();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(
            limiter.check("b"),
            Ok(()),
            "another user has their own bucket"
        );
        limiter.forget_idle();
        assert!(limiter.check("a").is_err(), "a user still limited is kept");
        assert!(Limiter::per_minute(0, 0).is_none());
    }
}
