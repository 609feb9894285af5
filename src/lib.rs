//! auth-service: user registration, login sessions and password resets over HTTP, in one small
//! synchronous binary with an embedded SQLite store.
//!
//! It speaks the HTTP API of the classic Flask "user authentication service" exactly, and adds
//! what a real service needs: tokens hashed at rest, expiring sessions, a login throttle,
//! bounded input, durable writes and graceful shutdown.
//!
//! The layers mirror the reference's modules: [`user`] (the record and the parsed inputs),
//! [`db`] (the store), [`auth`] (the decisions), [`app`] (the routes), and [`server`] (the
//! sockets). They can be used directly:
//!
//! ```
//! use std::sync::Arc;
//! use auth_service::auth::{Auth, Policy, Shared};
//! use auth_service::db::Db;
//! use auth_service::metrics::Metrics;
//! use auth_service::user::{Email, Password};
//!
//! let dir = std::env::temp_dir().join(format!("auth-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let db = Db::open(&dir.join("auth.db")).unwrap();
//! let policy = Policy { bcrypt_cost: 4, ..Policy::default() };
//! let metrics = Arc::new(Metrics::default());
//! let auth = Auth::new(db, Arc::new(Shared::new(policy, metrics)));
//!
//! let email = Email::parse("bob@example.com").unwrap();
//! let password = Password::parse("correct horse").unwrap();
//! auth.register_user(&email, &password).unwrap();
//! assert!(auth.valid_login(&email, &password).unwrap());
//!
//! let session = auth.create_session(&email).unwrap();
//! let user = auth.get_user_from_session_id(Some(&session)).unwrap().unwrap();
//! assert_eq!(user.email, "bob@example.com");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```
//!
//! Or as a server, which is what `main.rs` does:
//!
//! ```no_run
//! use auth_service::{config::Config, server::Server};
//!
//! let server = Server::start(Config::default()).unwrap();
//! println!("listening on {}", server.addr());
//! server.wait().unwrap();
//! ```

#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod delivery;
pub mod log;
pub mod metrics;
pub mod server;
pub mod session_cache;
pub mod slow_lane;
pub mod user;

pub use auth::{Auth, AuthError};
pub use config::Config;
pub use db::{Db, DbError, Value};
pub use server::Server;
pub use user::{Email, Password, User};
