//! Where the two stores could differ, they must not: these run on SQLite by default and on
//! PostgreSQL with `AUTH_TEST_POSTGRES`, and expect the same answers from both.

mod support;

use support::*;

#[test]
fn emails_fold_ascii_case_only_as_sqlite_nocase_does() {
    let s = TestServer::start();
    let register = |email: &str| s.register(email, "pw").status;
    assert_eq!(register("josé@example.com"), 200);
    // ASCII letters fold: the same address.
    assert_eq!(register("JOSé@EXAMPLE.COM"), 400);
    // A non-ASCII letter in another case is another address, on either store (PostgreSQL's
    // lower() would fold it under most locales; the schema pins the column to "C").
    assert_eq!(register("josÉ@example.com"), 200);

    let log_in = |email: &str| {
        let session = s.log_in_ok(email, "pw");
        s.profile(&session).json["email"].clone()
    };
    assert_eq!(log_in("JoSé@Example.Com"), "josé@example.com");
    assert_eq!(log_in("JOSÉ@example.com"), "josÉ@example.com");
}

#[test]
fn user_ids_count_up_from_one_and_survive_a_restart() {
    let s = TestServer::start();
    s.register_and_log_in("a@example.com", "pw");
    let s = s.restart();
    s.register_and_log_in("b@example.com", "pw");
    let users = auth_service::Db::open(&s.db_path()).unwrap();
    let a = users
        .find_user_by(&[("email", "a@example.com".into())])
        .unwrap();
    let b = users
        .find_user_by(&[("email", "B@example.com".into())])
        .unwrap();
    assert_eq!((a.id, b.id), (1, 2));
}
