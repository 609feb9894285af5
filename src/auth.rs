//! `Auth`: the reference's `auth.py` (registration, login, sessions, password resets), plus
//! what a real service needs: expiry, a login throttle, tokens hashed at rest, a dummy hash that
//! makes unknown emails cost what known ones do, and reset tokens handed to a delivery queue.
//!
//! Each worker owns an `Auth` (and through it a [`Db`] connection); what must be common to all
//! workers (the policy, the counters, the delivery queue) lives in [`Shared`] behind an `Arc`.
//! bcrypt never runs inside a database transaction or under a lock; where and how much of it
//! runs at once is the server's slow lane's business.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::db::{Db, DbError, Value};
use crate::delivery::Deliveries;
use crate::metrics::{LoginOutcome, Metrics};
use crate::user::{Email, InputError, Password, User};

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
}

impl Default for Policy {
    /// The defaults of the flags that set it: each is written once, in its row of
    /// `config::FLAGS`.
    fn default() -> Policy {
        crate::config::Config::default().policy
    }
}

/// The per-address cap across all emails is this many times the per-pair limit.
const ADDRESS_CAP_FACTOR: u32 = 10;

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
    failures_since_prune: AtomicU64,
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
            failures_since_prune: AtomicU64::new(0),
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

    /// A salted bcrypt hash of `password` at the configured cost.
    pub fn hash_password(&self, password: &Password) -> Result<String, AuthError> {
        Ok(bcrypt::hash(password.as_str(), self.policy().bcrypt_cost)?)
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

    /// Registers a user. [`AuthError::UserExists`] when the email is taken in any case;
    /// [`AuthError::Input`] when the password is shorter than the policy's minimum.
    pub fn register_user(&self, email: &Email, password: &Password) -> Result<User, AuthError> {
        self.check_new_password(password)?;
        // Checked first so a taken address costs no bcrypt; the unique constraint below still
        // decides between two racing registrations.
        if self
            .db
            .find_user(&[("email", email.as_str().into())])?
            .is_some()
        {
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

    fn check_password(
        &self,
        email: &Email,
        password: &Password,
    ) -> Result<Option<User>, AuthError> {
        let user = self.db.find_user(&[("email", email.as_str().into())])?;
        let hash = user
            .as_ref()
            .map_or(self.shared.dummy_hash.as_str(), |u| &u.hashed_password);
        let matched = {
            let started = Instant::now();
            let matched = bcrypt::verify(password.as_str(), hash)?;
            self.shared.metrics.bcrypt_verified(started.elapsed());
            matched
        };
        Ok(user.filter(|_| matched))
    }

    /// A new random UUID (version 4), as text.
    pub fn generate_uuid() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Starts a session for `email`, replacing any earlier one, and returns its id. Only the
    /// id's digest is stored.
    pub fn create_session(&self, email: &Email) -> Result<String, AuthError> {
        let user = self.find_by_email(email)?;
        self.start_session(user.id)
    }

    fn start_session(&self, user_id: i64) -> Result<String, AuthError> {
        let session_id = Auth::generate_uuid();
        let now = now();
        self.db.update_user(
            user_id,
            &[
                ("session_id", digest(&session_id).into()),
                ("session_created_at", now.into()),
                ("session_seen_at", now.into()),
            ],
        )?;
        Ok(session_id)
    }

    /// The user whose live session this is; `None` for no id, an unknown id or an expired
    /// session (absolute lifetime or idle time). Keeps an active session alive, writing at
    /// most about once a minute.
    pub fn get_user_from_session_id(
        &self,
        session_id: Option<&str>,
    ) -> Result<Option<User>, AuthError> {
        let Some(session_id) = session_id.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let hashed = digest(session_id);
        let Some(user) = self
            .db
            .find_user(&[("session_id", hashed.clone().into())])?
        else {
            return Ok(None);
        };
        let now = now();
        let policy = self.policy();
        let created = user.session_created_at.unwrap_or(i64::MIN);
        let seen = user.session_seen_at.unwrap_or(i64::MIN);
        if now >= created.saturating_add(policy.session_ttl)
            || now >= seen.saturating_add(policy.session_idle)
        {
            return Ok(None);
        }
        // Refresh the idle clock only now and then, so a busy session is not a write per read.
        let refresh_every = (policy.session_idle / 2).clamp(0, 60);
        if now - seen >= refresh_every {
            self.db.update_user_if(
                user.id,
                &[("session_id", hashed.into())],
                &[("session_seen_at", now.into())],
            )?;
        }
        Ok(Some(user))
    }

    /// Ends `user_id`'s session.
    pub fn destroy_session(&self, user_id: i64) -> Result<(), AuthError> {
        self.db.update_user(
            user_id,
            &[
                ("session_id", Value::Null),
                ("session_created_at", Value::Null),
                ("session_seen_at", Value::Null),
            ],
        )?;
        Ok(())
    }

    /// A new reset token for `email`, replacing any earlier one; its digest is stored with an
    /// expiry. [`AuthError::UnknownUser`] for an unknown email.
    pub fn get_reset_password_token(&self, email: &Email) -> Result<String, AuthError> {
        let user = self.find_by_email(email)?;
        let token = Auth::generate_uuid();
        self.db.update_user(
            user.id,
            &[
                ("reset_token", digest(&token).into()),
                ("reset_expires_at", (now() + self.policy().reset_ttl).into()),
            ],
        )?;
        Ok(token)
    }

    /// `get_reset_password_token`, then delivery: queued for the reset command when one is
    /// configured (the queue must have room before a token is made), else back to the caller
    /// (the reference's behaviour).
    pub fn request_password_reset(&self, email: &Email) -> Result<ResetDelivery, AuthError> {
        let Some(deliveries) = &self.shared.deliveries else {
            let token = self.get_reset_password_token(email)?;
            self.shared.metrics.reset_requested();
            return Ok(ResetDelivery::Token(token));
        };
        let slot = deliveries.reserve().ok_or(AuthError::DeliveryQueueFull)?;
        let token = self.get_reset_password_token(email)?;
        self.shared.metrics.reset_requested();
        slot.send(email, token);
        Ok(ResetDelivery::Sent)
    }

    /// Sets a new password with a reset token (the reference's signature: any user's token).
    pub fn update_password(&self, reset_token: &str, password: &Password) -> Result<(), AuthError> {
        self.reset_password(None, reset_token, password)
    }

    /// Sets a new password with a reset token that must belong to `email`. The token is spent,
    /// and the user's session ends.
    pub fn update_password_for(
        &self,
        email: &Email,
        reset_token: &str,
        password: &Password,
    ) -> Result<(), AuthError> {
        self.reset_password(Some(email), reset_token, password)
    }

    fn reset_password(
        &self,
        email: Option<&Email>,
        reset_token: &str,
        password: &Password,
    ) -> Result<(), AuthError> {
        self.check_new_password(password)?;
        if reset_token.is_empty() {
            return Err(AuthError::InvalidToken);
        }
        let hashed_token = digest(reset_token);
        let user = self
            .db
            .find_user(&[("reset_token", hashed_token.clone().into())])?
            .ok_or(AuthError::InvalidToken)?;
        let expired = user.reset_expires_at.is_none_or(|at| now() >= at);
        let other_email = email.is_some_and(|e| !e.as_str().eq_ignore_ascii_case(&user.email));
        if expired || other_email {
            return Err(AuthError::InvalidToken);
        }
        let hashed_password = self.hash_password(password)?;
        // Conditional on the token still being there: of two racing resets, one wins.
        let spent = self.db.update_user_if(
            user.id,
            &[("reset_token", hashed_token.into())],
            &[
                ("hashed_password", hashed_password.into()),
                ("reset_token", Value::Null),
                ("reset_expires_at", Value::Null),
                ("session_id", Value::Null),
                ("session_created_at", Value::Null),
                ("session_seen_at", Value::Null),
            ],
        )?;
        if !spent {
            return Err(AuthError::InvalidToken);
        }
        self.shared.metrics.reset_completed();
        Ok(())
    }

    /// A login from `client`: the throttle, the password check, then a new session whose id is
    /// returned. Failures are counted per (address, email) and per address.
    pub fn log_in(
        &self,
        client: IpAddr,
        email: &Email,
        password: &Password,
    ) -> Result<String, AuthError> {
        let pair = format!("pair {client} {}", email.as_str().to_ascii_lowercase());
        let address = format!("addr {client}");
        let policy = self.policy();
        let now = now();
        let limits = [
            (&pair, policy.max_login_failures),
            (
                &address,
                policy.max_login_failures.saturating_mul(ADDRESS_CAP_FACTOR),
            ),
        ];
        let mut pair_has_failures = false;
        for (scope, limit) in limits {
            if let Some((failures, window_ends)) = self.db.login_failures(scope, now)? {
                if failures >= limit {
                    self.shared.metrics.login(LoginOutcome::Throttled);
                    let retry_after = (window_ends - now).max(1) as u64;
                    return Err(AuthError::Throttled { retry_after });
                }
                pair_has_failures |= scope == &pair;
            }
        }
        match self.check_password(email, password)? {
            Some(user) => {
                // Only when there is something to clear: a delete is a commit, and a commit
                // is a disk flush that most logins need not wait for. A closed window left
                // behind is harmless: the next failure starts a new one.
                if pair_has_failures {
                    self.db.clear_login_failures(&pair)?;
                }
                let session_id = self.start_session(user.id)?;
                self.shared.metrics.login(LoginOutcome::Ok);
                Ok(session_id)
            }
            None => {
                let now = self::now();
                self.db
                    .record_login_failure(&pair, now, policy.login_window)?;
                self.db
                    .record_login_failure(&address, now, policy.login_window)?;
                self.prune_now_and_then(now)?;
                self.shared.metrics.login(LoginOutcome::Failed);
                Err(AuthError::InvalidLogin)
            }
        }
    }

    /// Every so many failures, drops the throttle's closed windows.
    fn prune_now_and_then(&self, now: i64) -> Result<(), AuthError> {
        let n = self
            .shared
            .failures_since_prune
            .fetch_add(1, Ordering::Relaxed);
        if n % 256 == 255 {
            self.db.prune_login_failures(now)?;
        }
        Ok(())
    }

    fn find_by_email(&self, email: &Email) -> Result<User, AuthError> {
        self.db
            .find_user(&[("email", email.as_str().into())])?
            .ok_or(AuthError::UnknownUser)
    }

    /// The user with `email` (in any ASCII case), if there is one.
    pub fn find_user(&self, email: &Email) -> Result<Option<User>, AuthError> {
        Ok(self.db.find_user(&[("email", email.as_str().into())])?)
    }

    // What the operator's commands (`auth-service users ...`, src/cli.rs) need beyond the
    // routes. Each is a few statements, safe beside a running server: what they change, its
    // workers read on their next request.

    /// How many live sessions `user` holds: not past `--session-ttl` since login nor
    /// `--session-idle` since last use, exactly as [`Auth::get_user_from_session_id`] judges.
    /// Today a user holds at most one.
    pub fn live_sessions(&self, user: &User) -> u32 {
        let (Some(created), Some(seen)) = (user.session_created_at, user.session_seen_at) else {
            return 0;
        };
        let (now, policy) = (now(), self.policy());
        let live = user.session_id.is_some()
            && now < created.saturating_add(policy.session_ttl)
            && now < seen.saturating_add(policy.session_idle);
        u32::from(live)
    }

    /// Up to `limit` users with an id above `after`, in id order, as an operator may see
    /// them: no hash, no token.
    pub fn list_users(&self, after: i64, limit: usize) -> Result<Vec<Listed>, AuthError> {
        Ok(self
            .db
            .list_users(after, limit)?
            .into_iter()
            .map(|user| Listed {
                sessions: self.live_sessions(&user),
                id: user.id,
                email: user.email,
            })
            .collect())
    }

    /// Sets `email`'s password without a reset token (an operator's reset): the user's
    /// sessions end and any reset token is spent, so that only the new password opens the
    /// account. [`AuthError::UnknownUser`] when there is no such user.
    pub fn set_password(&self, email: &Email, password: &Password) -> Result<User, AuthError> {
        self.check_new_password(password)?;
        let user = self.find_by_email(email)?;
        let hashed_password = self.hash_password(password)?;
        let changed = self.db.update_user_if(
            user.id,
            &[],
            &[
                ("hashed_password", hashed_password.into()),
                ("reset_token", Value::Null),
                ("reset_expires_at", Value::Null),
                ("session_id", Value::Null),
                ("session_created_at", Value::Null),
                ("session_seen_at", Value::Null),
            ],
        )?;
        // Deleted while bcrypt ran.
        if !changed {
            return Err(AuthError::UnknownUser);
        }
        Ok(user)
    }

    /// Ends every session of `email`'s user; the user, and how many of the sessions ended
    /// were live.
    pub fn end_sessions(&self, email: &Email) -> Result<(User, u32), AuthError> {
        let user = self.find_by_email(email)?;
        let live = self.live_sessions(&user);
        self.destroy_session(user.id).map_err(|e| match e {
            AuthError::Db(DbError::NoResultFound) => AuthError::UnknownUser,
            e => e,
        })?;
        Ok((user, live))
    }

    /// Deletes `email`'s user, and with it their sessions and reset token; the email can
    /// register again. The user as they were.
    pub fn delete_user(&self, email: &Email) -> Result<User, AuthError> {
        let user = self.find_by_email(email)?;
        if !self.db.delete_user(user.id)? {
            return Err(AuthError::UnknownUser);
        }
        Ok(user)
    }
}

/// A user as `auth-service users list` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: i64,
    pub email: String,
    /// Live sessions (see [`Auth::live_sessions`]).
    pub sessions: u32,
}

/// SHA-256 of a token, as lowercase hex: what the database holds instead of the token.
/// Tokens are 122 random bits, so a fast unsalted digest is enough to make a stolen database
/// useless for logging in while keeping lookups indexed.
pub fn digest(token: &str) -> String {
    let bytes = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in bytes {
        hex.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        hex.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
    }
    hex
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
