#!/usr/bin/env python3
"""The reference project's main.py: its end-to-end scenario, written with `requests`.

One function per end-point, each asserting the status code and the payload the reference
promises. Run it against a server that is already running:

    python3 tests/reference_client.py                        # http://localhost:5000
    python3 tests/reference_client.py http://127.0.0.1:8080  # anywhere else

It registers EMAIL, so it runs once per fresh database (.ci/reference_client.sh starts one).
"""
import sys

import requests

EMAIL = "guillaume@holberton.io"
PASSWD = "b4l0u"
NEW_PASSWD = "t4rt1fl3tt3"
BASE_URL = (sys.argv[1] if len(sys.argv) > 1 else "http://localhost:5000").rstrip("/")


def register_user(email: str, password: str) -> None:
    """POST /users registers the user."""
    response = requests.post(
        f"{BASE_URL}/users", data={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"email": email, "message": "user created"}


def log_in_wrong_password(email: str, password: str) -> None:
    """POST /sessions with a wrong password is refused with 401."""
    response = requests.post(
        f"{BASE_URL}/sessions", data={"email": email, "password": password}
    )
    assert response.status_code == 401, response.text
    assert "session_id" not in response.cookies


def log_in(email: str, password: str) -> str:
    """POST /sessions logs in; the session id comes back in the session_id cookie."""
    response = requests.post(
        f"{BASE_URL}/sessions", data={"email": email, "password": password}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"email": email, "message": "logged in"}
    session_id = response.cookies.get("session_id")
    assert session_id, "no session_id cookie"
    return session_id


def profile_unlogged() -> None:
    """GET /profile without a session is forbidden."""
    response = requests.get(f"{BASE_URL}/profile")
    assert response.status_code == 403, response.text


def profile_logged(session_id: str) -> None:
    """GET /profile with the session cookie shows the user's email."""
    response = requests.get(
        f"{BASE_URL}/profile", cookies={"session_id": session_id}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"email": EMAIL}


def log_out(session_id: str) -> None:
    """DELETE /sessions ends the session and redirects to GET /, which requests follows."""
    response = requests.delete(
        f"{BASE_URL}/sessions", cookies={"session_id": session_id}
    )
    assert [r.status_code for r in response.history] == [302], response.history
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Bienvenue"}
    # The session is over: the profile is forbidden with the old cookie.
    response = requests.get(
        f"{BASE_URL}/profile", cookies={"session_id": session_id}
    )
    assert response.status_code == 403, response.text


def reset_password_token(email: str) -> str:
    """POST /reset_password hands out a reset token."""
    response = requests.post(f"{BASE_URL}/reset_password", data={"email": email})
    assert response.status_code == 200, response.text
    payload = response.json()
    reset_token = payload.get("reset_token")
    assert reset_token, payload
    assert payload == {"email": email, "reset_token": reset_token}
    return reset_token


def update_password(email: str, reset_token: str, new_password: str) -> None:
    """PUT /reset_password spends the token on a new password."""
    response = requests.put(
        f"{BASE_URL}/reset_password",
        data={
            "email": email,
            "reset_token": reset_token,
            "new_password": new_password,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"email": email, "message": "Password updated"}


if __name__ == "__main__":
    register_user(EMAIL, PASSWD)
    log_in_wrong_password(EMAIL, NEW_PASSWD)
    profile_unlogged()
    session_id = log_in(EMAIL, PASSWD)
    profile_logged(session_id)
    log_out(session_id)
    reset_token = reset_password_token(EMAIL)
    update_password(EMAIL, reset_token, NEW_PASSWD)
    log_in(EMAIL, NEW_PASSWD)
    print(f"reference client: every step passed against {BASE_URL}")
