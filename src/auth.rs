//! `Auth`: the reference's `auth.py` (registration, login, sessions, password resets), plus
//! what a real service needs: expiry, a login throttle, tokens hashed at rest, a dummy hash that
//! makes unknown emails cost what known ones do, and reset tokens handed to a delivery queue.
//!
//! Each worker owns an `Auth` (and through it a [`Db`] connection); what must be common to all
//! workers (the policy, the counters, the delivery queue, the session cache) lives in [`Shared`]
//! behind an `Arc`.
//! bcrypt never runs inside a database transaction or under a lock; where and how much of it
//! runs at once is the server's slow lane's business.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::db::{now_millis, Count, Db, DbError, EndSessions, IfStill};
use crate::delivery::Deliveries;
use crate::metrics::{Limit, LoginOutcome, Metrics, SessionEnd};
use crate::session_cache::{CachedSession, SessionCache};
use crate::user::{ClientAddress, Email, InputError, Password, Session, User};

/// The rules `Auth` applies, from the command line.
#[derive(Debug, Clone)]
pub struct Policy {
    pub bcrypt_cost: u32,
    pub session_ttl: i64,
    pub session_idle: i64,
    pub reset_ttl: i64,
    pub reset_command: Option<PathBuf>,
    pub max_login_failures: u32,
    pub login_window: i64,
    pub min_password_length: usize,
    pub max_sessions: u32,
    pub reset_keeps_sessions: bool,
    /// Registrations per client address per `registration_window`; 0 for no limit.
    pub max_registrations: u32,
    pub registration_window: i64,
    /// Reset requests per email per `reset_window` (ten times that per address); 0 for no
    /// limit.
    pub max_reset_requests: u32,
    pub reset_window: i64,
}

impl Default for Policy {
    /// The defaults of the flags that set it: each is written once, in its row of
    /// `config::FLAGS`.
    fn default() -> Policy {
        crate::config::Config::default().policy
    }
}

/// A limit per address across all emails is this many times the limit per email (the login
/// throttle's, the reset requests').
const ADDRESS_CAP_FACTOR: u32 = 10;
/// Counters and sessions are pruned every this many counts and logins.
const PRUNE_EVERY: u64 = 256;
/// The most expired sessions one prune deletes.
const PRUNE_SESSIONS: usize = 1000;

/// Everything that can go wrong in `Auth`. Messages are lowercase and carry no secret.
#[derive(Debug)]
pub enum AuthError {
    /// Registration of an email that is taken (in any ASCII case).
    UserExists(String),
    /// No user has that email (reset requested for an unknown address, `create_session`).
    UnknownUser,
    /// Wrong password or unknown email at login: one error for both, on purpose.
    InvalidLogin,
    /// A reset token that is unknown, expired, spent, replaced or another email's.
    InvalidToken,
    /// Too many failed logins from this address (for this email, or for all); retry after
    /// this many seconds.
    Throttled { retry_after: u64 },
    /// Too many registrations from this address, or reset requests for this email or from
    /// this address; retry after this many seconds.
    RateLimited { retry_after: u64 },
    /// No session of the caller's has this handle.
    UnknownSession,
    /// The reset delivery queue is full; retry after a second.
    DeliveryQueueFull,
    /// A new password is shorter than the policy's `--min-password-length`.
    Input(InputError),
    /// bcrypt failed (a malformed stored hash, or the system's randomness).
    Hash(bcrypt::BcryptError),
    /// The store failed.
    Db(DbError),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The reference's wording, capital and all.
            AuthError::UserExists(email) => write!(f, "User {email} already exists"),
            AuthError::UnknownUser => write!(f, "no such user"),
            AuthError::InvalidLogin => write!(f, "wrong email or password"),
            AuthError::InvalidToken => write!(f, "invalid reset token"),
            AuthError::Throttled { retry_after } => {
                write!(f, "too many failed logins, retry in {retry_after} s")
            }
            AuthError::RateLimited { retry_after } => {
                write!(f, "too many requests, retry in {retry_after} s")
            }
            AuthError::UnknownSession => write!(f, "no such session"),
            AuthError::DeliveryQueueFull => write!(f, "too many reset tokens waiting to be sent"),
            AuthError::Input(e) => write!(f, "{e}"),
            AuthError::Hash(e) => write!(f, "bcrypt failed: {e}"),
            AuthError::Db(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Input(e) => Some(e),
            AuthError::Hash(e) => Some(e),
            AuthError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DbError> for AuthError {
    fn from(e: DbError) -> AuthError {
        AuthError::Db(e)
    }
}

impl From<InputError> for AuthError {
    fn from(e: InputError) -> AuthError {
        AuthError::Input(e)
    }
}

impl From<bcrypt::BcryptError> for AuthError {
    fn from(e: bcrypt::BcryptError) -> AuthError {
        AuthError::Hash(e)
    }
}

/// A live session, found from the id a request carries: who holds it, and the session.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// Shared with the session cache, which hands out the same values to every request.
    pub user: Arc<User>,
    pub session: Arc<Session>,
    /// The digest of the session id (what the store knows it by).
    digest: String,
}

/// What a password-reset request produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ResetDelivery {
    /// No reset command is configured: the token goes back in the response (the reference).
    Token(String),
    /// The token is queued for the reset command; the response must not carry it.
    Sent,
}

/// What every worker's `Auth` has in common, made once at start: the rules, the counters its
/// decisions move, the reset delivery queue, and the dummy hash.
pub struct Shared {
    policy: Policy,
    metrics: Arc<Metrics>,
    /// With `--reset-command`: the queue its runs wait in.
    deliveries: Option<Arc<Deliveries>>,
    /// What one bcrypt operation at the configured cost is expected to take, before any has
    /// been measured.
    bcrypt_estimate: Duration,
    /// A hash that matches nothing, verified for unknown emails so they cost what a wrong
    /// password costs and the time of a login does not tell whether an address is registered.
    dummy_hash: String,
    /// Live sessions as last read, while the store has not changed since.
    sessions: SessionCache,
    /// Counts and logins since start, to prune now and then.
    counted: AtomicU64,
    sessions_started: AtomicU64,
}

impl Shared {
    /// The state for `policy`, counting into `metrics` (the server's, which it exposes).
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Shared {
        // A cost-4 hash relabelled with the real cost: a well-formed hash whose verification
        // runs the full cost, made in a millisecond instead of a quarter second at start.
        let started = Instant::now();
        let cheap = bcrypt::hash("auth-service dummy password", 4).expect("bcrypt at cost 4");
        // Each step of the cost doubles the work.
        let bcrypt_estimate = started
            .elapsed()
            .saturating_mul(1 << policy.bcrypt_cost.saturating_sub(4).min(27));
        let dummy_hash = format!("$2b${:02}{}", policy.bcrypt_cost, &cheap[6..]);
        let deliveries = policy
            .reset_command
            .clone()
            .map(|command| Deliveries::new(command, Arc::clone(&metrics)));
        Shared {
            policy,
            metrics,
            deliveries,
            bcrypt_estimate,
            dummy_hash,
            sessions: SessionCache::default(),
            counted: AtomicU64::new(0),
            sessions_started: AtomicU64::new(0),
        }
    }

    /// What one bcrypt operation at the configured cost should take on this machine, scaled
    /// from one at cost 4 timed at start.
    pub fn bcrypt_estimate(&self) -> Duration {
        self.bcrypt_estimate
    }

    /// The hash verified for unknown emails. Public so tests can check it runs at the
    /// configured cost; it matches no password, so showing it reveals nothing.
    pub fn dummy_hash(&self) -> &str {
        &self.dummy_hash
    }
}

/// The reference's `Auth`, owning this worker's store connection.
pub struct Auth {
    db: Db,
    shared: Arc<Shared>,
}

impl Auth {
    pub fn new(db: Db, shared: Arc<Shared>) -> Auth {
        Auth { db, shared }
    }

    /// Whether the store answers a query: the health check.
    pub fn healthy(&self) -> Result<(), AuthError> {
        Ok(self.db.ping()?)
    }

    fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    // --- The reference's methods -------------------------------------------------------------

    /// A salted bcrypt hash of `password` at the configured cost.
    pub fn hash_password(&self, password: &Password) -> Result<String, AuthError> {
        Ok(bcrypt::hash(password.as_str(), self.policy().bcrypt_cost)?)
    }

    /// Registers a user. [`AuthError::UserExists`] when the email is taken in any case;
    /// [`AuthError::Input`] when the password is shorter than the policy's minimum.
    pub fn register_user(&self, email: &Email, password: &Password) -> Result<User, AuthError> {
        self.check_new_password(password)?;
        // Checked first so a taken address costs no bcrypt; the unique constraint below still
        // decides between two racing registrations.
        if self.find_user(email)?.is_some() {
            return Err(AuthError::UserExists(email.to_string()));
        }
        let hashed = self.hash_password(password)?;
        match self.db.add_user(email.as_str(), &hashed) {
            Ok(user) => {
                self.shared.metrics.registration();
                Ok(user)
            }
            Err(DbError::AlreadyExists) => Err(AuthError::UserExists(email.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `password` is `email`'s. An unknown email runs the same bcrypt verification as
    /// a known one, against a hash that matches nothing.
    pub fn valid_login(&self, email: &Email, password: &Password) -> Result<bool, AuthError> {
        Ok(self.check_password(email, password)?.is_some())
    }

    /// A new random UUID (version 4), as text.
    pub fn generate_uuid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Starts one more session for `email` and returns its id (only its digest is stored).
    /// Past `--max-sessions`, the user's least recently used session ends.
    pub fn create_session(&self, email: &Email) -> Result<String, AuthError> {
        let user = self.find_user(email)?.ok_or(AuthError::UnknownUser)?;
        self.start_session(&user, &user.hashed_password)?
            .ok_or(AuthError::InvalidLogin)
    }

    /// The user whose live session this is; `None` for no id, an unknown id or an expired
    /// session (absolute lifetime or idle time).
    pub fn get_user_from_session_id(
        &self,
        session_id: Option<&str>,
    ) -> Result<Option<User>, AuthError> {
        Ok(self
            .session(session_id)?
            .map(|live| Arc::unwrap_or_clone(live.user)))
    }

    /// Ends every session of `user_id`.
    pub fn destroy_session(&self, user_id: i64) -> Result<(), AuthError> {
        self.db.end_sessions(user_id, None)?;
        Ok(())
    }

    /// A new reset token for `email`, replacing any earlier one; its digest is stored with an
    /// expiry. [`AuthError::UnknownUser`] for an unknown email.
    pub fn get_reset_password_token(&self, email: &Email) -> Result<String, AuthError> {
        let user = self.find_user(email)?.ok_or(AuthError::UnknownUser)?;
        self.new_reset_token(&user)
    }

    /// Sets a new password with a reset token (the reference's signature: any user's token).
    pub fn update_password(&self, reset_token: &str, password: &Password) -> Result<(), AuthError> {
        self.reset_password(None, reset_token, password).map(drop)
    }

    // --- The service's: registration, login and sessions ---------------------------------

    /// A registration from `client`: [`Auth::register_user`], within `--max-registrations`
    /// per address, counted whether or not the registration succeeds.
    pub fn sign_up(
        &self,
        client: ClientAddress,
        email: &Email,
        password: &Password,
    ) -> Result<User, AuthError> {
        let policy = self.policy();
        let scope = format!("register {client}");
        self.within_limits(
            &[(&scope, policy.max_registrations)],
            policy.registration_window,
            |retry_after| {
                self.shared.metrics.rate_limited(Limit::Registration);
                AuthError::RateLimited { retry_after }
            },
        )?;
        self.register_user(email, password)
    }

    /// A login from `client`: the throttle, the password check, then a new session whose id is
    /// returned. The attempt is counted against (address, email) and address before the
    /// password is checked, in the same statement that reads the counts, so that parallel
    /// guesses cannot overshoot the limit; a success takes its count back and clears the pair.
    pub fn log_in(
        &self,
        client: ClientAddress,
        email: &Email,
        password: &Password,
    ) -> Result<Login, AuthError> {
        let attempt = self.password_attempt(client, email.as_str())?;
        let Some(user) = self.check_password(email, password)? else {
            self.shared.metrics.login(LoginOutcome::Failed);
            return Err(AuthError::InvalidLogin);
        };
        let hash = self.rehash_if_needed(&user, password)?;
        // Only if the hash just verified is still the stored one: a reset or a password change
        // that landed while bcrypt ran ends this login too.
        let session_id = hash
            .and_then(|hash| self.start_session(&user, &hash).transpose())
            .transpose()?;
        let Some(session_id) = session_id else {
            self.shared.metrics.login(LoginOutcome::Failed);
            return Err(AuthError::InvalidLogin);
        };
        self.attempt_succeeded(&attempt)?;
        self.shared.metrics.login(LoginOutcome::Ok);
        Ok(Login {
            session_id,
            user_id: user.id,
        })
    }

    /// The live session whose id this is, its idle clock refreshed (at most about once a
    /// minute, so that a busy session is not a write per request); `None` for no id, an
    /// unknown one or an expired one, which is then deleted.
    pub fn session(&self, session_id: Option<&str>) -> Result<Option<LiveSession>, AuthError> {
        let Some(session_id) = session_id.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let digest = digest(session_id);
        let Some((user, session)) = self.find_session(&digest)? else {
            return Ok(None);
        };
        let now = now_millis();
        if !self.is_live(&session, now) {
            if self.db.end_session(&digest)? {
                self.shared.metrics.session_ended(SessionEnd::Expired, 1);
            }
            return Ok(None);
        }
        // The idle clock is written back at most every quarter of the idle time (and every
        // minute at most), so an idle session may end up to that much early.
        let idle = self.policy().session_idle.saturating_mul(1000);
        if now - session.seen_at >= (idle / 4).min(60_000) {
            self.db.touch_session(&digest, now)?;
        }
        Ok(Some(LiveSession {
            user,
            session,
            digest,
        }))
    }

    /// The sessions of `live`'s user, most recently used first, each with whether it is
    /// `live` itself.
    pub fn sessions(&self, live: &LiveSession) -> Result<Vec<(Session, bool)>, AuthError> {
        let sessions = self.db.sessions(live.user.id)?;
        Ok(sessions
            .into_iter()
            .map(|s| {
                let current = s.handle == live.session.handle;
                (s, current)
            })
            .collect())
    }

    /// Ends `live` (a logout).
    pub fn log_out(&self, live: &LiveSession) -> Result<(), AuthError> {
        if self.db.end_session(&live.digest)? {
            self.shared.metrics.session_ended(SessionEnd::Logout, 1);
        }
        Ok(())
    }

    /// Ends the session of `live`'s user with this public handle.
    /// [`AuthError::UnknownSession`] when the user has none.
    pub fn end_session(&self, live: &LiveSession, handle: &str) -> Result<(), AuthError> {
        if !self.db.end_session_by_handle(live.user.id, handle)? {
            return Err(AuthError::UnknownSession);
        }
        self.shared.metrics.session_ended(SessionEnd::Revoked, 1);
        Ok(())
    }

    /// Ends every session of `live`'s user but `live`; how many.
    pub fn end_other_sessions(&self, live: &LiveSession) -> Result<usize, AuthError> {
        let ended = self.db.end_sessions(live.user.id, Some(&live.digest))?;
        self.shared
            .metrics
            .session_ended(SessionEnd::Revoked, ended);
        Ok(ended)
    }

    /// Ends every session of `live`'s user, `live` included; how many.
    pub fn end_all_sessions(&self, live: &LiveSession) -> Result<usize, AuthError> {
        let ended = self.db.end_sessions(live.user.id, None)?;
        self.shared
            .metrics
            .session_ended(SessionEnd::Revoked, ended);
        Ok(ended)
    }

    // --- The service's: passwords and accounts ---------------------------------------------

    /// Changes the password of `live`'s user, who must give the current one (checked, and
    /// throttled, as a login from `client` is). Every other session of the user ends; `live`
    /// stays.
    pub fn change_password(
        &self,
        client: ClientAddress,
        live: &LiveSession,
        current: &Password,
        new: &Password,
    ) -> Result<(), AuthError> {
        self.check_new_password(new)?;
        let verified = self.confirm_password(client, live, current)?;
        let new_hash = self.hash_password(new)?;
        let changed = self.db.replace_password(
            live.user.id,
            IfStill::Hash(&verified),
            &new_hash,
            EndSessions::AllBut(&live.digest),
        )?;
        if !changed {
            // The password changed (or the account went) while bcrypt ran.
            return Err(AuthError::InvalidLogin);
        }
        self.shared.metrics.password_changed();
        Ok(())
    }

    /// Deletes `live`'s user, who must give the password (checked, and throttled, as a login
    /// from `client` is), with every session and token of theirs; the email is free again.
    pub fn delete_account(
        &self,
        client: ClientAddress,
        live: &LiveSession,
        password: &Password,
    ) -> Result<(), AuthError> {
        self.confirm_password(client, live, password)?;
        if self.db.delete_user(live.user.id)? {
            self.shared.metrics.user_deleted();
        }
        Ok(())
    }

    // --- The service's: password resets ----------------------------------------------------

    /// A reset request from `client`, within `--max-reset-requests` per email and ten times
    /// that per address. With a reset command the token is queued for it (the queue must have
    /// room before a token is made), and an unknown email gets the same answer with nothing
    /// sent, so that the answer tells nobody who is registered; without one the token comes
    /// back to the caller and an unknown email is [`AuthError::UnknownUser`] (the
    /// reference's behaviour).
    pub fn request_password_reset(
        &self,
        client: ClientAddress,
        email: &Email,
    ) -> Result<ResetDelivery, AuthError> {
        let policy = self.policy();
        let by_email = format!("reset {}", email.as_str().to_ascii_lowercase());
        let by_address = format!("reset {client}");
        let per_address = policy.max_reset_requests.saturating_mul(ADDRESS_CAP_FACTOR);
        self.within_limits(
            &[
                (&by_email, policy.max_reset_requests),
                (&by_address, per_address),
            ],
            policy.reset_window,
            |retry_after| {
                self.shared.metrics.rate_limited(Limit::Reset);
                AuthError::RateLimited { retry_after }
            },
        )?;
        let Some(deliveries) = &self.shared.deliveries else {
            let token = self.get_reset_password_token(email)?;
            self.shared.metrics.reset_requested();
            return Ok(ResetDelivery::Token(token));
        };
        let slot = deliveries.reserve().ok_or(AuthError::DeliveryQueueFull)?;
        if let Some(user) = self.find_user(email)? {
            let token = self.new_reset_token(&user)?;
            self.shared.metrics.reset_requested();
            slot.send(email, token);
        }
        Ok(ResetDelivery::Sent)
    }

    /// Sets a new password with a reset token that must belong to `email`. The token is spent
    /// and, unless `--reset-keeps-sessions`, every session of the user ends. The user's id.
    pub fn update_password_for(
        &self,
        email: &Email,
        reset_token: &str,
        password: &Password,
    ) -> Result<i64, AuthError> {
        self.reset_password(Some(email), reset_token, password)
    }

    // --- The operator's commands (`auth-service users ...`, src/cli.rs) -------------------
    //
    // Each is a few statements, safe beside a running server: what they change, its workers
    // read on their next request.

    /// Up to `limit` users with an id above `after`, in id order, as an operator may see
    /// them: no hash, no token, and how many live sessions each holds.
    pub fn list_users(&self, after: i64, limit: usize) -> Result<Vec<Listed>, AuthError> {
        let now = now_millis();
        self.db
            .list_users(after, limit)?
            .into_iter()
            .map(|user| {
                Ok(Listed {
                    sessions: self.live_sessions(user.id, now)?,
                    id: user.id,
                    email: user.email,
                })
            })
            .collect()
    }

    /// Sets `email`'s password without a reset token (an operator's reset): every session of
    /// the user ends and any reset token is spent, so that only the new password opens the
    /// account. [`AuthError::UnknownUser`] when there is no such user.
    pub fn set_password(&self, email: &Email, password: &Password) -> Result<User, AuthError> {
        self.check_new_password(password)?;
        let user = self.find_user(email)?.ok_or(AuthError::UnknownUser)?;
        let hashed_password = self.hash_password(password)?;
        let changed = self.db.replace_password(
            user.id,
            IfStill::Always,
            &hashed_password,
            EndSessions::All,
        )?;
        // Deleted while bcrypt ran.
        if !changed {
            return Err(AuthError::UnknownUser);
        }
        Ok(user)
    }

    /// Ends every session of `email`'s user; the user, and how many of the sessions ended
    /// were live.
    pub fn end_sessions(&self, email: &Email) -> Result<(User, usize), AuthError> {
        let user = self.find_user(email)?.ok_or(AuthError::UnknownUser)?;
        let live = self.live_sessions(user.id, now_millis())?;
        self.db.end_sessions(user.id, None)?;
        Ok((user, live))
    }

    /// Deletes `email`'s user, and with them their sessions and reset token; the email can
    /// register again. The user as they were.
    pub fn delete_user(&self, email: &Email) -> Result<User, AuthError> {
        let user = self.find_user(email)?.ok_or(AuthError::UnknownUser)?;
        if !self.db.delete_user(user.id)? {
            return Err(AuthError::UnknownUser);
        }
        self.shared.metrics.user_deleted();
        Ok(user)
    }

    /// How many of `user_id`'s sessions are live at `now`.
    fn live_sessions(&self, user_id: i64, now: i64) -> Result<usize, AuthError> {
        let sessions = self.db.sessions(user_id)?;
        Ok(sessions.iter().filter(|s| self.is_live(s, now)).count())
    }

    // --- How ---------------------------------------------------------------------------------

    /// The session with this digest and its user, expired or not: from the cache while the
    /// store has not changed since it was read there, else from the store.
    fn find_session(&self, digest: &str) -> Result<Option<CachedSession>, AuthError> {
        let token = self.db.change_token();
        if let Some(found) = token.and_then(|t| self.shared.sessions.get(digest, &t)) {
            self.shared.metrics.session_cache(true);
            return Ok(Some(found));
        }
        let found = self
            .db
            .session(digest)?
            .map(|(user, session)| (Arc::new(user), Arc::new(session)));
        if let Some(token) = token {
            self.shared.metrics.session_cache(false);
            if let Some(found) = &found {
                self.shared.sessions.put(digest, found, token);
            }
        }
        Ok(found)
    }

    /// Whether `session` is live at `now` (Unix milliseconds): not past `--session-ttl` since
    /// it began, nor `--session-idle` since it was last used.
    fn is_live(&self, session: &Session, now: i64) -> bool {
        let policy = self.policy();
        now < session
            .created_at
            .saturating_add(policy.session_ttl.saturating_mul(1000))
            && now
                < session
                    .seen_at
                    .saturating_add(policy.session_idle.saturating_mul(1000))
    }

    /// A password being set (at registration or reset) must be `--min-password-length`
    /// characters long; one offered at login need not, so that raising the minimum locks
    /// nobody out.
    fn check_new_password(&self, password: &Password) -> Result<(), AuthError> {
        let min = self.policy().min_password_length;
        if password.as_str().chars().count() < min {
            return Err(AuthError::Input(InputError::PasswordTooShort(min)));
        }
        Ok(())
    }

    /// The user with `email` (in any ASCII case), if there is one.
    pub fn find_user(&self, email: &Email) -> Result<Option<User>, AuthError> {
        Ok(self.db.find_user(&[("email", email.as_str().into())])?)
    }

    /// `email`'s user when `password` is theirs. An unknown email costs one bcrypt
    /// verification too, against the dummy hash.
    fn check_password(
        &self,
        email: &Email,
        password: &Password,
    ) -> Result<Option<User>, AuthError> {
        let user = self.find_user(email)?;
        let hash = user
            .as_ref()
            .map_or(self.shared.dummy_hash.as_str(), |u| &u.hashed_password);
        let matched = self.verify(password, hash)?;
        Ok(user.filter(|_| matched))
    }

    /// bcrypt's verification, timed into the metrics.
    fn verify(&self, password: &Password, hash: &str) -> Result<bool, AuthError> {
        let started = Instant::now();
        let matched = bcrypt::verify(password.as_str(), hash)?;
        self.shared.metrics.bcrypt_verified(started.elapsed());
        Ok(matched)
    }

    /// Checks that `password` is `live`'s user's, as a login from `client` would (throttled
    /// alike); the hash it matched.
    fn confirm_password(
        &self,
        client: ClientAddress,
        live: &LiveSession,
        password: &Password,
    ) -> Result<String, AuthError> {
        let attempt = self.password_attempt(client, &live.user.email)?;
        let hash = &live.user.hashed_password;
        if !self.verify(password, hash)? {
            return Err(AuthError::InvalidLogin);
        }
        self.attempt_succeeded(&attempt)?;
        Ok(hash.clone())
    }

    /// When the stored hash's cost is not the configured one, re-hashes the password just
    /// verified at the configured cost and stores it, if the verified hash is still the
    /// stored one: so that old accounts come to cost what unknown emails do. The hash now
    /// stored, or `None` when it changed meanwhile.
    fn rehash_if_needed(
        &self,
        user: &User,
        password: &Password,
    ) -> Result<Option<String>, AuthError> {
        let cost = user
            .hashed_password
            .parse::<bcrypt::HashParts>()
            .map(|h| h.get_cost())
            .ok();
        if cost == Some(self.policy().bcrypt_cost) {
            return Ok(Some(user.hashed_password.clone()));
        }
        let new_hash = self.hash_password(password)?;
        let replaced = self.db.update_user_if(
            user.id,
            &[("hashed_password", user.hashed_password.as_str().into())],
            &[("hashed_password", new_hash.as_str().into())],
        )?;
        if !replaced {
            return Ok(None);
        }
        self.shared.metrics.rehashed();
        Ok(Some(new_hash))
    }

    /// Starts a session for `user` if `verified_hash` is still the stored one; its id.
    fn start_session(&self, user: &User, verified_hash: &str) -> Result<Option<String>, AuthError> {
        let session_id = Auth::generate_uuid();
        let handle = uuid::Uuid::new_v4().simple().to_string();
        let now = now_millis();
        let max = self.policy().max_sessions;
        let started = self.db.add_session(
            user.id,
            &digest(&session_id),
            &handle,
            now,
            verified_hash,
            max,
        )?;
        let Some(evicted) = started else {
            return Ok(None);
        };
        self.shared
            .metrics
            .session_ended(SessionEnd::Evicted, evicted);
        self.now_and_then(&self.shared.sessions_started, || {
            let idle = self.policy().session_idle.saturating_mul(1000);
            self.db.prune_sessions(now - idle, PRUNE_SESSIONS).map(drop)
        })?;
        Ok(Some(session_id))
    }

    /// Counts an attempt to check `email`'s password from `client`, per (address, email) and
    /// per address, and refuses it when either is over its limit.
    fn password_attempt(
        &self,
        client: ClientAddress,
        email: &str,
    ) -> Result<PasswordAttempt, AuthError> {
        let policy = self.policy();
        let attempt = PasswordAttempt {
            pair: format!("login {client} {}", email.to_ascii_lowercase()),
            address: format!("login {client}"),
        };
        let per_address = policy.max_login_failures.saturating_mul(ADDRESS_CAP_FACTOR);
        self.within_limits(
            &[
                (&attempt.pair, policy.max_login_failures),
                (&attempt.address, per_address),
            ],
            policy.login_window,
            |retry_after| {
                self.shared.metrics.login(LoginOutcome::Throttled);
                AuthError::Throttled { retry_after }
            },
        )?;
        Ok(attempt)
    }

    /// The attempt was no failure: its pair is cleared and the address's count taken back.
    fn attempt_succeeded(&self, attempt: &PasswordAttempt) -> Result<(), AuthError> {
        Ok(self
            .db
            .count_back(&attempt.pair, &attempt.address, now_secs())?)
    }

    /// Counts one more event in each scope and refuses with `refusal(retry_after)` when one is
    /// over its limit (a limit of 0 is none: such a scope is not counted).
    fn within_limits(
        &self,
        limits: &[(&str, u32)],
        window: i64,
        refusal: impl FnOnce(u64) -> AuthError,
    ) -> Result<(), AuthError> {
        let limited: Vec<(&str, u32)> = limits.iter().copied().filter(|(_, l)| *l > 0).collect();
        if limited.is_empty() {
            return Ok(());
        }
        let now = now_secs();
        let scopes: Vec<&str> = limited.iter().map(|(scope, _)| *scope).collect();
        let counts = self.db.count(&scopes, now, window)?;
        self.now_and_then(&self.shared.counted, || {
            self.db.prune_counters(now).map(drop)
        })?;
        let over = counts
            .iter()
            .zip(&limited)
            .find(|(Count { n, .. }, (_, limit))| n > limit);
        match over {
            Some((count, _)) => Err(refusal((count.window_ends - now).max(1) as u64)),
            None => Ok(()),
        }
    }

    /// Runs `prune` every `PRUNE_EVERY` calls counted by `calls`.
    fn now_and_then(
        &self,
        calls: &AtomicU64,
        prune: impl FnOnce() -> Result<(), DbError>,
    ) -> Result<(), AuthError> {
        if calls.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            prune()?;
        }
        Ok(())
    }

    /// A new reset token for `user`, replacing any earlier one.
    fn new_reset_token(&self, user: &User) -> Result<String, AuthError> {
        let token = Auth::generate_uuid();
        self.db.update_user(
            user.id,
            &[
                ("reset_token", digest(&token).into()),
                (
                    "reset_expires_at",
                    (now_secs() + self.policy().reset_ttl).into(),
                ),
            ],
        )?;
        Ok(token)
    }

    fn reset_password(
        &self,
        email: Option<&Email>,
        reset_token: &str,
        password: &Password,
    ) -> Result<i64, AuthError> {
        self.check_new_password(password)?;
        if reset_token.is_empty() {
            return Err(AuthError::InvalidToken);
        }
        let hashed_token = digest(reset_token);
        let user = self
            .db
            .find_user(&[("reset_token", hashed_token.clone().into())])?
            .ok_or(AuthError::InvalidToken)?;
        let expired = user.reset_expires_at.is_none_or(|at| now_secs() >= at);
        let other_email = email.is_some_and(|e| !e.as_str().eq_ignore_ascii_case(&user.email));
        if expired || other_email {
            return Err(AuthError::InvalidToken);
        }
        let hashed_password = self.hash_password(password)?;
        let end = if self.policy().reset_keeps_sessions {
            EndSessions::None
        } else {
            EndSessions::All
        };
        // Conditional on the token still being there: of two racing resets, one wins.
        let spent = self.db.replace_password(
            user.id,
            IfStill::ResetToken(&hashed_token),
            &hashed_password,
            end,
        )?;
        if !spent {
            return Err(AuthError::InvalidToken);
        }
        self.shared.metrics.reset_completed();
        Ok(user.id)
    }
}

/// The counters a password check was counted in, to take it back if it succeeds.
struct PasswordAttempt {
    pair: String,
    address: String,
}

/// A login that succeeded: the new session's id, and whose it is.
#[derive(Debug)]
pub struct Login {
    pub session_id: String,
    pub user_id: i64,
}

/// A user as `auth-service users list` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: i64,
    pub email: String,
    /// Live sessions.
    pub sessions: usize,
}

/// SHA-256 of a token, as lowercase hex: what the database holds instead of the token.
/// Tokens are 122 random bits, so a fast unsalted digest is enough to make a stolen database
/// useless for logging in while keeping lookups indexed.
pub fn digest(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 64];
    for (pair, b) in hex
        .chunks_exact_mut(2)
        .zip(Sha256::digest(token.as_bytes()))
    {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// Seconds since the Unix epoch (reset tokens' expiry and the counters' windows).
fn now_secs() -> i64 {
    now_millis() / 1000
}
