"""engine.doctor.redact_url(): the one helper that hides a database password wherever a URL is
printed (`engine db status`, `engine db url`, `engine doctor`), checked against libpq's own
reading of the connection string: everything but the password is kept."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from engine.doctor import redact_url

SECRET_KEYS = ("password", "sslpassword")
passwords = st.text(alphabet=string.printable.strip() + " é€", min_size=1, max_size=30).filter(
    lambda p: p.strip() != ""
)


def _without_secrets(url: str) -> dict[str, object]:
    return {k: v for k, v in conninfo_to_dict(url).items() if k not in SECRET_KEYS}


def _forms(password: str) -> list[str]:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    return [
        f"postgresql://engine:{quote(password, safe='')}@db.example:5432/engine?sslmode=require",
        f"postgres://engine@db.example/engine?password={quote(password, safe='')}&application_name=x",
        f"postgresql://engine:{quote(password, safe='')}@h1:5432,h2:5433/engine?sslpassword={quote(password, safe='')}",
        f"host=db.example port=5432 password='{escaped}' dbname=engine user=engine",
        f"host=db.example password = '{escaped}'",
    ]


@given(passwords)
def test_the_password_is_hidden_and_everything_else_kept(generated: str) -> None:
    password = "Zq9~" + generated  # a prefix found nowhere else in the URL
    for url in _forms(password):
        secrets = [k for k in SECRET_KEYS if k in conninfo_to_dict(url)]
        assert secrets  # libpq reads a password in each form
        for placeholder in ("***", None):
            shown = redact_url(url, placeholder)
            assert "Zq9" not in shown
            assert _without_secrets(shown) == _without_secrets(url)
            parsed = conninfo_to_dict(shown)
            assert {k: parsed.get(k) for k in secrets} == {k: placeholder for k in secrets}


@pytest.mark.parametrize(
    ("url", "shown", "left_out"),
    [
        (
            "postgresql://engine:s3cr%40t@db:5432/engine",
            "postgresql://engine:***@db:5432/engine",
            "postgresql://engine@db:5432/engine",
        ),
        # a raw @ in the password: the host is what follows the last one, as for libpq
        (
            "postgresql://u:p@ss@h/db?PassWord=x&sslmode=require",
            "postgresql://u:***@h/db?PassWord=***&sslmode=require",
            "postgresql://u@h/db?sslmode=require",
        ),
        (
            "postgresql://u:pw@[::1/db",
            "postgresql://u:***@[::1/db",
            "postgresql://u@[::1/db",
        ),  # not splittable
        ("host=h password=abc dbname=x", "host=h password=*** dbname=x", "host=h dbname=x"),
        # nothing to hide: unchanged (the embedded database's URL)
        (
            "postgresql://engine@/engine?host=/tmp/x/run",
            "postgresql://engine@/engine?host=/tmp/x/run",
            "postgresql://engine@/engine?host=/tmp/x/run",
        ),
    ],
)
def test_examples(url: str, shown: str, left_out: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(url, placeholder=None) == left_out
