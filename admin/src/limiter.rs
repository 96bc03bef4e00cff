//! Brute-force throttling of the token endpoint and of admin keys.
//!
//! Only *failed* client authentications count. A key (a client id as seen
//! from one peer address, or a peer address) that reaches its limit of
//! failures within one window is refused with `429` and `Retry-After` until
//! the window ends; a successful authentication clears its client key's
//! count. So a client that presents its secret correctly is never slowed by
//! its own traffic, however fast it asks; an address spraying guesses across
//! many client ids is throttled by the address limit.
//!
//! A client id is locked per address, not everywhere: client ids are not
//! secret (they label the public `/metrics`), so a global lock would let
//! anyone keep any application from getting tokens with five bad requests a
//! minute. Guessing a 128-bit secret from many addresses gains nothing.
//!
//! While a client key is locked, even correct credentials are answered with
//! `429`: answering them would tell the guesser when it has won.
//!
//! Memory is bounded: at most [`MAX_KEYS`] tracked keys; when full, expired
//! windows are pruned, and if the table is still full new keys are not
//! tracked (the address limit still applies to keys already tracked).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures allowed per client id per window: a legitimate client that
/// mistyped its secret gets a few tries.
pub(crate) const CLIENT_FAILURES: u32 = 5;
/// Failures allowed per peer address per window: several clients may sit
/// behind one NAT.
pub(crate) const ADDR_FAILURES: u32 = 20;
/// The counting window, and so the longest lockout.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Tracked keys at most (~100 bytes each).
pub(crate) const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A client id as seen from one peer address (`None` when the server
    /// does not know peers, e.g. behind an in-process router).
    Client(String, Option<IpAddr>),
    Addr(IpAddr),
    /// A peer address presenting wrong admin keys to the admin API.
    AdminAddr(IpAddr),
}

impl Key {
    fn limit(&self) -> u32 {
        match self {
            Key::Client(..) => CLIENT_FAILURES,
            Key::Addr(_) | Key::AdminAddr(_) => ADDR_FAILURES,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Failure counters (see the module docs).
#[derive(Default)]
pub(crate) struct Limiter {
    windows: parking_lot::Mutex<HashMap<Key, Window>>,
}

impl Limiter {
    /// If any of `keys` is locked, how long until it is not (whole seconds,
    /// at least 1).
    pub(crate) fn locked(&self, keys: &[Key], now: Instant) -> Option<u64> {
        let windows = self.windows.lock();
        keys.iter()
            .filter_map(|k| {
                let w = windows.get(k)?;
                let end = w.start + WINDOW;
                (w.failures >= k.limit() && now < end).then(|| {
                    let left = end - now;
                    left.as_secs() + u64::from(left.subsec_nanos() > 0)
                })
            })
            .max()
    }

    /// Counts one failure against each of `keys`.
    pub(crate) fn failure(&self, keys: &[Key], now: Instant) {
        let mut windows = self.windows.lock();
        for k in keys {
            if !windows.contains_key(k) && windows.len() >= MAX_KEYS {
                windows.retain(|_, w| now < w.start + WINDOW);
                if windows.len() >= MAX_KEYS {
                    continue;
                }
            }
            let w = windows.entry(k.clone()).or_insert(Window {
                start: now,
                failures: 0,
            });
            if now >= w.start + WINDOW {
                *w = Window {
                    start: now,
                    failures: 0,
                };
            }
            w.failures = w.failures.saturating_add(1);
        }
    }

    /// Clears a client id's failures after it authenticated.
    pub(crate) fn success(&self, client: &Key) {
        self.windows.lock().remove(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_the_limit_until_the_window_ends() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let c = Key::Client("c".into(), None);
        for _ in 0..CLIENT_FAILURES {
            assert_eq!(l.locked(std::slice::from_ref(&c), t0), None);
            l.failure(std::slice::from_ref(&c), t0);
        }
        assert_eq!(l.locked(std::slice::from_ref(&c), t0), Some(60));
        let later = t0 + Duration::from_millis(59_500);
        assert_eq!(l.locked(std::slice::from_ref(&c), later), Some(1));
        assert_eq!(l.locked(std::slice::from_ref(&c), t0 + WINDOW), None);
        // A new window starts from zero.
        l.failure(std::slice::from_ref(&c), t0 + WINDOW);
        assert_eq!(l.locked(std::slice::from_ref(&c), t0 + WINDOW), None);
    }

    #[test]
    fn success_clears_the_client_but_not_the_address() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let c = Key::Client("c".into(), Some([10, 0, 0, 1].into()));
        let a = Key::Addr([10, 0, 0, 1].into());
        for _ in 0..ADDR_FAILURES {
            l.failure(&[c.clone(), a.clone()], t0);
        }
        l.success(&c);
        assert_eq!(l.locked(std::slice::from_ref(&c), t0), None);
        assert!(l.locked(std::slice::from_ref(&a), t0).is_some());
        assert!(l.locked(&[Key::Addr([10, 0, 0, 2].into())], t0).is_none());
    }

    #[test]
    fn a_client_locked_at_one_address_is_free_at_another() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let at = |ip: [u8; 4]| Key::Client("c".into(), Some(ip.into()));
        for _ in 0..CLIENT_FAILURES {
            l.failure(&[at([10, 0, 0, 1])], t0);
        }
        assert!(l.locked(&[at([10, 0, 0, 1])], t0).is_some());
        assert!(l.locked(&[at([10, 0, 0, 2])], t0).is_none());
    }
}
