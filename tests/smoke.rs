mod support;
use support::*;

#[test]
fn greets() {
    let s = TestServer::start();
    let r = s.get("/", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.text, r#"{"message":"Bienvenue"}"#);
    let c = ChildServer::start(&[]);
    assert_eq!(c.get("/", None).status, 200);
}
