//! Live sessions as the store last gave them, shared by every worker, so that `GET /profile`
//! (the call every page of an app makes) need not read the store each time.
//!
//! The cache is exactly as correct as the store: each entry was read under a change token
//! ([`Db::change_token`](crate::db::Db::change_token)), and is used only while the store's
//! token is still that one, that is while nothing at all has been committed since, by this
//! process or any other (a shell command, a second instance on the same file). Any write,
//! a logout, a reset, a deleted user, another session's idle clock, makes every entry stale at
//! once, and the next request reads the store again. Expiry is not cached: it is judged from
//! the session's times at each request. On PostgreSQL there is no token, and no caching.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::db::ChangeToken;
use crate::user::{Session, User};

/// The most sessions held (each a few hundred bytes: about 2 MiB in all); past it the cache
/// starts over, so a server with more live users than this reads the store more often, never
/// wrongly.
const MAX_ENTRIES: usize = 4_096;

/// A session and its user as the store gave them, shared by every request that finds them here.
pub type CachedSession = (Arc<User>, Arc<Session>);

/// The sessions read under one change token, by their digests.
#[derive(Default)]
pub struct SessionCache {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    token: Option<ChangeToken>,
    sessions: HashMap<String, CachedSession>,
}

impl SessionCache {
    /// The session with this digest and its user, if it was read while the store's change
    /// token was `token` (the one it has now).
    pub fn get(&self, digest: &str, token: &ChangeToken) -> Option<CachedSession> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if state.token.as_ref() != Some(token) {
            return None;
        }
        state.sessions.get(digest).cloned()
    }

    /// Keeps a session read from the store while its change token was `token` (taken before
    /// the read: a commit in between only makes the entry stale sooner).
    pub fn put(&self, digest: &str, found: &CachedSession, token: ChangeToken) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.token != Some(token) || state.sessions.len() >= MAX_ENTRIES {
            state.sessions.clear();
            state.token = Some(token);
        }
        state.sessions.insert(digest.to_owned(), found.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: usize) -> CachedSession {
        let user = User {
            id: n as i64,
            email: format!("user{n}@example.com"),
            hashed_password: "hash".into(),
            session_id: Some(format!("digest{n}")),
            reset_token: None,
            reset_expires_at: None,
        };
        let session = Session {
            handle: format!("handle{n}"),
            user_id: n as i64,
            created_at: 0,
            seen_at: 0,
        };
        (Arc::new(user), Arc::new(session))
    }

    #[test]
    fn entries_hold_under_their_token_only_and_the_cache_starts_over_when_full() {
        let cache = SessionCache::default();
        let (t1, t2) = (ChangeToken::of(1), ChangeToken::of(2));
        for n in 0..MAX_ENTRIES {
            cache.put(&format!("digest{n}"), &session(n), t1);
        }
        assert_eq!(cache.get("digest0", &t1), Some(session(0)));
        assert_eq!(cache.get("digest0", &t2), None, "read under another token");

        // One more than it holds: the cache starts over with the newest.
        cache.put("digest-new", &session(MAX_ENTRIES), t1);
        assert_eq!(cache.get("digest0", &t1), None);
        assert_eq!(cache.get("digest-new", &t1), Some(session(MAX_ENTRIES)));

        // An entry read under a new token drops every entry of the old one.
        cache.put("digest1", &session(1), t2);
        assert_eq!(cache.get("digest-new", &t1), None);
        assert_eq!(cache.get("digest-new", &t2), None);
        assert_eq!(cache.get("digest1", &t2), Some(session(1)));
    }
}
