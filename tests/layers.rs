//! The library's layers used directly, as the reference's `db.py` and `auth.py` are: `Db`'s
//! queries and errors, and `Auth`'s methods, each on its own temporary database.

mod support;

use std::sync::Arc;

use auth_service::auth::{digest, Auth, AuthError, Policy, Shared};
use auth_service::db::{Db, DbError, Value};
use auth_service::metrics::Metrics;
use auth_service::user::{Email, Password};
use support::{is_uuid_v4, set_schema_version, test_db, TempDir};

/// A store on a fresh file (or, with AUTH_TEST_POSTGRES, a fresh PostgreSQL database); the
/// directory lives as long as the returned guard.
fn db() -> (Db, TempDir) {
    let dir = TempDir::new();
    let db = Db::open(&test_db(&dir.path().join("auth.db"))).expect("the database opens");
    (db, dir)
}

/// An `Auth` at bcrypt cost 4 on a fresh file, and a second connection to the same store to
/// look at what it wrote.
fn auth() -> (Auth, Db, TempDir) {
    auth_with(|_| {})
}

/// [`auth`] with a policy that `adjust` changes.
fn auth_with(adjust: impl FnOnce(&mut Policy)) -> (Auth, Db, TempDir) {
    let (db, dir) = db();
    let mut policy = Policy {
        bcrypt_cost: 4,
        ..Default::default()
    };
    adjust(&mut policy);
    let metrics = Arc::new(Metrics::default());
    let look = Db::open(&test_db(&dir.path().join("auth.db"))).expect("a second connection");
    (
        Auth::new(db, Arc::new(Shared::new(policy, metrics))),
        look,
        dir,
    )
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn password(s: &str) -> Password {
    Password::parse(s).unwrap()
}

// Db

#[test]
fn add_user_saves_and_returns_the_user() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "hash-b").unwrap();
    let eve = db.add_user("eve@example.com", "hash-e").unwrap();
    assert_eq!(bob.email, "bob@example.com");
    assert_eq!(bob.hashed_password, "hash-b");
    assert_eq!(
        (bob.session_id.as_deref(), bob.reset_token.as_deref()),
        (None, None)
    );
    assert_ne!(bob.id, eve.id);
    assert_eq!(db.find_user_by(&[("id", bob.id.into())]).unwrap(), bob);
    assert_eq!(db.find_user_by(&[("id", eve.id.into())]).unwrap(), eve);
}

#[test]
fn add_user_refuses_an_email_taken_in_another_case() {
    let (db, _dir) = db();
    db.add_user("bob@example.com", "h").unwrap();
    for taken in ["bob@example.com", "BOB@example.com", "Bob@Example.Com"] {
        assert!(
            matches!(db.add_user(taken, "h2"), Err(DbError::AlreadyExists)),
            "{taken} is taken"
        );
    }
    // The original row is untouched.
    let bob = db
        .find_user_by(&[("email", "bob@example.com".into())])
        .unwrap();
    assert_eq!(bob.hashed_password, "h");
}

#[test]
fn find_user_by_matches_every_filter() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "same-hash").unwrap();
    let eve = db.add_user("eve@example.com", "same-hash").unwrap();
    db.update_user(eve.id, &[("session_id", "s-eve".into())])
        .unwrap();

    // One filter, several, and a NULL one.
    assert_eq!(
        db.find_user_by(&[("email", "eve@example.com".into())])
            .unwrap()
            .id,
        eve.id
    );
    assert_eq!(
        db.find_user_by(&[("email", "EVE@EXAMPLE.COM".into())])
            .unwrap()
            .id,
        eve.id,
        "emails match in any case"
    );
    assert_eq!(
        db.find_user_by(&[("hashed_password", "same-hash".into())])
            .unwrap()
            .id,
        bob.id,
        "the first match, by id"
    );
    assert_eq!(
        db.find_user_by(&[
            ("hashed_password", "same-hash".into()),
            ("session_id", "s-eve".into()),
        ])
        .unwrap()
        .id,
        eve.id
    );
    assert_eq!(
        db.find_user_by(&[
            ("hashed_password", "same-hash".into()),
            ("session_id", Value::Null),
        ])
        .unwrap()
        .id,
        bob.id
    );
    assert_eq!(
        db.find_user_by(&[("id", bob.id.into()), ("email", "bob@example.com".into())])
            .unwrap()
            .id,
        bob.id
    );
}

#[test]
fn find_user_by_reports_no_result() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "h").unwrap();
    let misses: [&[(&str, Value)]; 4] = [
        &[("email", "eve@example.com".into())],
        &[("id", (bob.id + 1).into())],
        &[
            ("email", "bob@example.com".into()),
            ("hashed_password", "x".into()),
        ],
        &[("session_id", "nobody's".into())],
    ];
    for filters in misses {
        assert!(
            matches!(db.find_user_by(filters), Err(DbError::NoResultFound)),
            "{filters:?}"
        );
    }
}

#[test]
fn find_user_by_refuses_an_unknown_column_or_no_filter() {
    let (db, _dir) = db();
    db.add_user("bob@example.com", "h").unwrap();
    let invalid: [&[(&str, Value)]; 4] = [
        &[("no_such_column", "x".into())],
        &[
            ("email", "bob@example.com".into()),
            ("password", "h".into()),
        ],
        // Never formatted into SQL: an injection attempt is just an unknown name.
        &[("email = email OR 1=1 --", "x".into())],
        &[],
    ];
    for filters in invalid {
        let result = db.find_user_by(filters);
        assert!(
            matches!(result, Err(DbError::InvalidRequest(_))),
            "{filters:?}: {result:?}"
        );
    }
}

#[test]
fn update_user_applies_the_changes() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "h").unwrap();
    db.update_user(
        bob.id,
        &[
            ("hashed_password", "h2".into()),
            ("reset_token", "t".into()),
        ],
    )
    .unwrap();
    let after = db.find_user_by(&[("id", bob.id.into())]).unwrap();
    assert_eq!(after.hashed_password, "h2");
    assert_eq!(after.reset_token.as_deref(), Some("t"));
    assert_eq!(after.email, "bob@example.com");

    db.update_user(bob.id, &[("reset_token", Value::Null)])
        .unwrap();
    let after = db.find_user_by(&[("id", bob.id.into())]).unwrap();
    assert_eq!(after.reset_token, None);
}

#[test]
fn update_user_with_an_unknown_column_writes_nothing() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "h").unwrap();
    let result = db.update_user(
        bob.id,
        &[
            ("hashed_password", "changed".into()),
            ("no_such_column", "x".into()),
        ],
    );
    assert!(
        matches!(result, Err(DbError::InvalidRequest(_))),
        "{result:?}"
    );
    assert_eq!(db.find_user_by(&[("id", bob.id.into())]).unwrap(), bob);
}

#[test]
fn update_user_of_an_unknown_id_is_no_result() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "h").unwrap();
    let result = db.update_user(bob.id + 1, &[("hashed_password", "x".into())]);
    assert!(matches!(result, Err(DbError::NoResultFound)), "{result:?}");
    assert_eq!(db.find_user_by(&[("id", bob.id.into())]).unwrap(), bob);
}

#[test]
fn update_user_cannot_take_an_email_in_use() {
    let (db, _dir) = db();
    db.add_user("bob@example.com", "h").unwrap();
    let eve = db.add_user("eve@example.com", "h").unwrap();
    let result = db.update_user(eve.id, &[("email", "BOB@example.com".into())]);
    assert!(matches!(result, Err(DbError::AlreadyExists)), "{result:?}");
}

#[test]
fn the_database_file_is_reopened_not_wiped() {
    let dir = TempDir::new();
    let path = test_db(&dir.path().join("auth.db"));
    let bob = Db::open(&path)
        .unwrap()
        .add_user("bob@example.com", "h")
        .unwrap();
    let db = Db::open(&path).unwrap();
    assert_eq!(db.find_user_by(&[("id", bob.id.into())]).unwrap(), bob);
}

#[test]
fn a_database_from_a_newer_binary_is_refused() {
    let dir = TempDir::new();
    let path = test_db(&dir.path().join("auth.db"));
    Db::open(&path)
        .unwrap()
        .add_user("bob@example.com", "h")
        .unwrap();
    let newer = Db::schema_version() + 1;
    set_schema_version(&path, newer);
    match Db::open(&path) {
        Err(e @ DbError::SchemaTooNew { .. }) => {
            let message = e.to_string();
            assert!(message.contains("newer"), "{message}");
            assert!(message.contains(&newer.to_string()), "{message}");
        }
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

// Auth

#[test]
fn hash_password_is_salted_bcrypt() {
    let (auth, _db, _dir) = auth();
    let pw = password("b4l0u");
    let first = auth.hash_password(&pw).unwrap();
    let second = auth.hash_password(&pw).unwrap();
    assert_ne!(first, second, "two hashes of one password differ (salt)");
    assert!(first.starts_with("$2"), "{first}");
    assert!(!first.contains("b4l0u"));
    for hash in [&first, &second] {
        assert!(bcrypt::verify("b4l0u", hash).unwrap());
        assert!(!bcrypt::verify("b4l0U", hash).unwrap());
    }
}

#[test]
fn register_user_saves_a_hashed_password() {
    let (auth, db, _dir) = auth();
    let user = auth
        .register_user(&email("bob@example.com"), &password("b4l0u"))
        .unwrap();
    assert_eq!(user.email, "bob@example.com");
    assert!(bcrypt::verify("b4l0u", &user.hashed_password).unwrap());
    let stored = db
        .find_user_by(&[("email", "bob@example.com".into())])
        .unwrap();
    assert_eq!(stored, user);
}

#[test]
fn register_user_twice_says_the_user_exists() {
    let (auth, _db, _dir) = auth();
    auth.register_user(&email("bob@example.com"), &password("pw"))
        .unwrap();
    for again in ["bob@example.com", "Bob@Example.com"] {
        match auth.register_user(&email(again), &password("other")) {
            Err(e @ AuthError::UserExists(_)) => {
                assert_eq!(e.to_string(), format!("User {again} already exists"));
            }
            other => panic!("expected UserExists, got {other:?}"),
        }
    }
}

#[test]
fn valid_login_checks_the_password() {
    let (auth, _db, _dir) = auth();
    let bob = email("bob@example.com");
    auth.register_user(&bob, &password("b4l0u")).unwrap();
    assert!(auth.valid_login(&bob, &password("b4l0u")).unwrap());
    assert!(auth
        .valid_login(&email("BOB@example.com"), &password("b4l0u"))
        .unwrap());
    assert!(!auth.valid_login(&bob, &password("b4l0U")).unwrap());
    assert!(!auth.valid_login(&bob, &password("b4l0u ")).unwrap());
    assert!(!auth
        .valid_login(&email("eve@example.com"), &password("b4l0u"))
        .unwrap());
}

#[test]
fn generate_uuid_is_a_fresh_v4() {
    let a = Auth::generate_uuid();
    let b = Auth::generate_uuid();
    assert!(is_uuid_v4(&a), "{a}");
    assert!(is_uuid_v4(&b), "{b}");
    assert_ne!(a, b);
}

#[test]
fn create_session_stores_only_the_digest() {
    let (auth, db, _dir) = auth();
    let bob = email("bob@example.com");
    let user = auth.register_user(&bob, &password("pw")).unwrap();
    let session = auth.create_session(&bob).unwrap();
    assert!(is_uuid_v4(&session), "{session}");
    // The user holds the session by its digest, never by the id itself.
    let stored = db
        .find_user_by(&[("session_id", digest(&session).into())])
        .unwrap();
    assert_eq!(stored.id, user.id);
    assert_eq!(stored.session_id, Some(digest(&session)));
    assert!(matches!(
        db.find_user_by(&[("session_id", session.as_str().into())]),
        Err(DbError::NoResultFound)
    ));
    // Found some other way, the user has no session to show.
    let stored = db.find_user_by(&[("id", user.id.into())]).unwrap();
    assert_eq!(stored.session_id, None);
}

#[test]
fn create_session_for_an_unknown_email_fails() {
    let (auth, _db, _dir) = auth();
    let result = auth.create_session(&email("eve@example.com"));
    assert!(matches!(result, Err(AuthError::UnknownUser)), "{result:?}");
}

#[test]
fn get_user_from_session_id_finds_the_live_session_only() {
    let (auth, _db, _dir) = auth();
    let bob = email("bob@example.com");
    let user = auth.register_user(&bob, &password("pw")).unwrap();
    let session = auth.create_session(&bob).unwrap();

    let found = auth.get_user_from_session_id(Some(&session)).unwrap();
    assert_eq!(found.map(|u| u.id), Some(user.id));
    assert_eq!(auth.get_user_from_session_id(None).unwrap(), None);
    assert_eq!(auth.get_user_from_session_id(Some("")).unwrap(), None);
    let unknown = Auth::generate_uuid();
    assert_eq!(auth.get_user_from_session_id(Some(&unknown)).unwrap(), None);
    // The digest itself is not a session id.
    let hashed = digest(&session);
    assert_eq!(auth.get_user_from_session_id(Some(&hashed)).unwrap(), None);

    // A new session does not end the old one.
    let newer = auth.create_session(&bob).unwrap();
    assert!(auth
        .get_user_from_session_id(Some(&session))
        .unwrap()
        .is_some());
    assert!(auth
        .get_user_from_session_id(Some(&newer))
        .unwrap()
        .is_some());

    // With --max-sessions 1 (the reference's model), a new session replaces the old one.
    let (auth, _db, _dir) = auth_with(|p| p.max_sessions = 1);
    auth.register_user(&bob, &password("pw")).unwrap();
    let session = auth.create_session(&bob).unwrap();
    let newer = auth.create_session(&bob).unwrap();
    assert_eq!(auth.get_user_from_session_id(Some(&session)).unwrap(), None);
    assert!(auth
        .get_user_from_session_id(Some(&newer))
        .unwrap()
        .is_some());
}

#[test]
fn a_new_session_evicts_older_ones_never_itself_even_in_the_same_millisecond() {
    let (db, _dir) = db();
    let bob = db.add_user("bob@example.com", "hash").unwrap();
    let start = |digest: &str, handle: &str, max| {
        db.add_session(bob.id, digest, handle, 1_000, "hash", max)
            .unwrap()
    };
    let live = |digest: &str| db.session(digest).unwrap().is_some();

    assert_eq!(start("d9", "h1", 2), Some(0));
    assert_eq!(start("d8", "h2", 2), Some(0));
    // One clock reading for all, and each new digest sorts before the older ones: only "not
    // the new one" decides.
    assert_eq!(start("d7", "h3", 2), Some(1));
    assert!(live("d7"));
    assert_eq!(start("d6", "h4", 1), Some(2));
    assert!(live("d6"));
    assert!(!live("d9") && !live("d8") && !live("d7"));
}

#[test]
fn destroy_session_ends_it() {
    let (auth, db, _dir) = auth();
    let bob = email("bob@example.com");
    let user = auth.register_user(&bob, &password("pw")).unwrap();
    let session = auth.create_session(&bob).unwrap();
    auth.destroy_session(user.id).unwrap();
    assert_eq!(auth.get_user_from_session_id(Some(&session)).unwrap(), None);
    let stored = db.find_user_by(&[("id", user.id.into())]).unwrap();
    assert_eq!(stored.session_id, None);
    // Ending a session that is already over is harmless.
    auth.destroy_session(user.id).unwrap();
}

#[test]
fn get_reset_password_token_needs_a_known_email() {
    let (auth, db, _dir) = auth();
    let bob = email("bob@example.com");
    let user = auth.register_user(&bob, &password("pw")).unwrap();
    let token = auth.get_reset_password_token(&bob).unwrap();
    assert!(is_uuid_v4(&token), "{token}");
    let stored = db.find_user_by(&[("id", user.id.into())]).unwrap();
    assert_eq!(stored.reset_token, Some(digest(&token)));

    let result = auth.get_reset_password_token(&email("eve@example.com"));
    assert!(matches!(result, Err(AuthError::UnknownUser)), "{result:?}");
}

#[test]
fn update_password_sets_the_hash_and_clears_the_token() {
    let (auth, db, _dir) = auth();
    let bob = email("bob@example.com");
    let user = auth.register_user(&bob, &password("b4l0u")).unwrap();
    let token = auth.get_reset_password_token(&bob).unwrap();

    auth.update_password(&token, &password("t4rt1fl3tt3"))
        .unwrap();
    let stored = db.find_user_by(&[("id", user.id.into())]).unwrap();
    assert_eq!(stored.reset_token, None);
    assert_ne!(stored.hashed_password, user.hashed_password);
    assert!(bcrypt::verify("t4rt1fl3tt3", &stored.hashed_password).unwrap());
    assert!(auth.valid_login(&bob, &password("t4rt1fl3tt3")).unwrap());
    assert!(!auth.valid_login(&bob, &password("b4l0u")).unwrap());

    // Spent: the same token does not work twice.
    let again = auth.update_password(&token, &password("other"));
    assert!(matches!(again, Err(AuthError::InvalidToken)), "{again:?}");
}

#[test]
fn update_password_with_an_unknown_token_fails_and_changes_nothing() {
    let (auth, db, _dir) = auth();
    let bob = email("bob@example.com");
    let user = auth.register_user(&bob, &password("pw")).unwrap();
    auth.get_reset_password_token(&bob).unwrap();
    for token in [Auth::generate_uuid(), String::new()] {
        let result = auth.update_password(&token, &password("new"));
        assert!(matches!(result, Err(AuthError::InvalidToken)), "{result:?}");
    }
    let stored = db.find_user_by(&[("id", user.id.into())]).unwrap();
    assert_eq!(stored.hashed_password, user.hashed_password);
    assert!(stored.reset_token.is_some());
}

#[test]
fn errors_have_lowercase_messages_and_sources() {
    use std::error::Error;
    let (auth, _db, _dir) = auth();
    let e = auth.create_session(&email("eve@example.com")).unwrap_err();
    assert_eq!(e.to_string(), "no such user");
    let e = AuthError::from(DbError::NoResultFound);
    assert!(e.source().is_some(), "a wrapped store error is the source");
    assert_eq!(DbError::NoResultFound.to_string(), "no result found");
}
